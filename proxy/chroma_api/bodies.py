"""The request bodies of Chroma's record routes, as chromadb 1.x sends them, parsed with
Chroma's leniency (unknown fields are ignored, as its server does) and crossfade's strictness
(a JSON value is taken as the type it is sent as; NaN, Infinity, lone surrogates and integers
past 64 bits are refused). A body that does not parse is a 422 naming the field, nothing done.

Embeddings come as JSON floats or, when the server says `supports_base64_encoding` (its
pre-flight checks), as base64 of little-endian float32 (chromadb's `pack_embedding_safely`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proxy.chroma_api import ChromaRefusal
from proxy.document import MAX_ID_CHARS
from proxy.errors import Invalid
from proxy.filters import Int64, Text

Include = Literal["distances", "documents", "embeddings", "metadatas", "uris"]
Id = Annotated[Text, Field(min_length=1, max_length=MAX_ID_CHARS)]
Scalar = Text | Int64 | float | bool
MetaValue = Scalar | list[Text] | list[Int64] | list[float] | list[bool] | None
Metadata = dict[Text, MetaValue]
Vector = list[float] | str  # floats, or base64 float32
MAX_IDS = 100_000  # ids a get or delete may name


class ChromaBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class GetBody(ChromaBody):
    ids: list[Id] | None = Field(None, max_length=MAX_IDS)
    where: Any = None
    where_document: Any = None
    limit: int | None = Field(None, ge=0)
    offset: int | None = Field(None, ge=0)
    include: list[Include] = ["metadatas", "documents"]


class QueryBody(ChromaBody):
    query_embeddings: list[Vector] | None = None
    query_texts: Any = None
    ids: list[Id] | None = Field(None, max_length=MAX_IDS)
    n_results: int = Field(10, ge=0)
    where: Any = None
    where_document: Any = None
    include: list[Include] = ["metadatas", "documents", "distances"]


class RecordsBody(ChromaBody):
    """add, upsert and update: column-oriented, one entry per id in each list given."""

    ids: list[Id]
    embeddings: list[Vector] | None = None
    metadatas: list[Metadata | None] | None = None
    documents: list[Text | None] | None = None
    uris: Any = None


class DeleteBody(ChromaBody):
    ids: list[Id] | None = Field(None, max_length=MAX_IDS)
    where: Any = None
    where_document: Any = None
    limit: int | None = Field(None, ge=0)


def parse(model: type[ChromaBody], body: Any) -> Any:
    """`body` as `model`; a mismatch is a 422 naming the first field at fault (Chroma's words
    for it: "Failed to deserialize the JSON body into the target type")."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Invalid(
            f"Failed to deserialize the JSON body into the target type: {where}: {first['msg']}"
        ) from None


def vectors(raw: list[Vector], field: str) -> list[np.ndarray]:
    """Each embedding as float32, from JSON floats or base64; refusing empty ones, non-finite
    values and base64 that is not whole float32s."""
    out = []
    for i, v in enumerate(raw):
        if isinstance(v, str):
            try:
                data = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise ChromaRefusal(f"{field}[{i}]: not base64 (nor a list of floats)") from None
            if len(data) % 4:
                raise ChromaRefusal(f"{field}[{i}]: base64 of {len(data)} bytes: not float32s")
            vec = np.frombuffer(data, dtype="<f4").astype(np.float32)
        else:
            vec = np.asarray(v, dtype=np.float32)
        if vec.size == 0:
            raise ChromaRefusal(f"{field}[{i}]: an empty embedding")
        if not np.isfinite(vec).all():
            raise ChromaRefusal(f"{field}[{i}]: numbers must be finite (float32)")
        out.append(vec)
    return out


def refuse_where_document(where_document: Any) -> None:
    if where_document is not None:
        raise ChromaRefusal(
            "where_document is not supported by crossfade (full-text conditions on the "
            "document): filter on metadata with `where`"
        )


def refuse_uris(include: list[str]) -> None:
    if "uris" in include:
        raise ChromaRefusal("include 'uris' is not supported by crossfade (records hold no URIs)")
