"""A write's records (add, upsert, update) as crossfade documents, with Chroma's meaning:

    add     new ids only: a record whose id exists is left as it is (Chroma ignores it)
    upsert  new ids are added; an existing record takes the new document, and the new
            metadata merged into what it had (Chroma's upsert merges)
    update  existing ids only (others are ignored, as Chroma does); the document when given
            (else the stored one is kept), the metadata merged (a key set to null is removed)

The text is what migrates the record (the new model embeds it), so add and upsert need
`documents` (400 naming it otherwise); an update of metadata alone keeps the stored text. The
app's embeddings, when sent, stay with their record, to be checked as the app's model's
(proxy/app_vectors.py) against the text the record ends up with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from proxy.chroma_api import ChromaRefusal
from proxy.chroma_api.bodies import RecordsBody, vectors
from proxy.document import Doc, parse_doc

Op = Literal["add", "upsert", "update"]
NEEDS_DOCUMENTS = (
    "documents: every record needs its document (crossfade migrates a record by its text: the "
    "new model embeds it); send `documents` with the embeddings"
)


@dataclass(frozen=True)
class Stored:
    """What a write needs of a record the index holds."""

    text: str | None
    metadata: dict[str, Any]


@dataclass
class Planned:
    docs: list[Doc] = field(default_factory=list)
    vectors: list[np.ndarray] | None = None  # the app's, one per doc, when it sent them
    where: list[str] = field(default_factory=list)  # each doc's place in the request


def check_batch(body: RecordsBody, max_batch: int) -> None:
    n = len(body.ids)
    if n == 0:
        raise ChromaRefusal("ids: at least one record")
    if n > max_batch:
        raise ChromaRefusal(
            f"{n} records, over {max_batch} per request (chroma_api.max_batch_size, said by "
            "pre-flight-checks): send smaller batches"
        )
    if body.uris is not None:
        raise ChromaRefusal("uris are not supported by crossfade: send documents")
    for name in ("embeddings", "metadatas", "documents"):
        given = getattr(body, name)
        if given is not None and len(given) != n:
            raise ChromaRefusal(
                "Inconsistent number of IDs, embeddings, documents, URIs and metadatas "
                f"({n} ids, {len(given)} {name})"
            )
    seen: set[str] = set()
    for i in body.ids:
        if i in seen:
            raise ChromaRefusal(f"Expected IDs to be unique, found duplicates of: {i}")
        seen.add(i)


def plan(op: Op, body: RecordsBody, stored: dict[str, Stored]) -> Planned:
    """The documents to write (and the app's vectors for them), given the records the index
    holds among the request's ids. Refuses (nothing written) a record that can't be stored."""
    vecs = vectors(body.embeddings, "embeddings") if body.embeddings is not None else None
    docs_in = body.documents or [None] * len(body.ids)
    metas_in = body.metadatas or [None] * len(body.ids)
    out = Planned(vectors=[] if vecs is not None else None)
    for i, doc_id in enumerate(body.ids):
        have = stored.get(doc_id)
        if op == "add" and have is not None:
            continue
        if op == "update" and have is None:
            continue
        text = docs_in[i]
        if text is None and op != "update":
            raise ChromaRefusal(f"{NEEDS_DOCUMENTS} (documents[{i}] is missing)")
        if text is None:
            assert have is not None
            if have.text is None:
                raise ChromaRefusal(f"{NEEDS_DOCUMENTS} (record {doc_id!r} holds no text)")
            text = have.text
        meta = merged(have.metadata if have is not None else {}, metas_in[i])
        where = f"documents[{i}]"
        out.docs.append(parse_doc({"id": doc_id, "text": text, "metadata": meta}, where))
        out.where.append(f"embeddings[{i}]")
        if vecs is not None and out.vectors is not None:
            out.vectors.append(vecs[i])
    return out


def merged(have: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """Chroma's metadata merge: the given keys set, a key given as null removed."""
    if given is None:
        return dict(have)
    out = {**have, **given}
    return {k: v for k, v in out.items() if v is not None}
