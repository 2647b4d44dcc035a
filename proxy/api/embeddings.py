"""OpenAI's embeddings API: crossfade as the app's embeddings endpoint. An app that embeds
locally and sends vectors (LangChain's and LlamaIndex's Qdrant stores, Chroma's OpenAI
embedding function) points its embeddings base URL here, names the migration's old model
(or new), and gets exactly that model's vectors: the ones crossfade writes for a document.
Every vector returned is remembered with its text (proxy/remembered.py), so when it comes
back as a query or a write crossfade knows its text and can serve it across the migration.

`POST /v1/embeddings` and `GET /v1/models` (`/v1/models/{model}`), in OpenAI's shapes; their
errors too (`{"error": {"message", "type", "param", "code"}}`), rendered by this module's
route class and, for the gate's refusals, `refused`."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from proxy.api.documents import DocIdConvertor  # noqa: F401 (registers `doc_id`)
from proxy.api.errors import OrjsonResponse, ShapedRoute
from proxy.api.services import Services, Svc, access
from proxy.errors import BadRequest, CrossfadeError, NotFound, TooLarge
from proxy.filters import StrictBody, Text
from proxy.model import Embedder, count_tokens
from proxy.runtime import SIDES
from proxy.security import Access

log = logging.getLogger("crossfade")
OWNER = "crossfade"
TOKEN_IDS = (
    "input as token ids is not supported: crossfade embeds text with the migration's own "
    "models, whose tokenizers are not OpenAI's. Send the texts as strings (LangChain: "
    "OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
)

# -- OpenAI's error shape -------------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


# OpenAI's codes where a status implies one (the gate's refusals carry no details).
CODES = {401: "invalid_api_key"}


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> OrjsonResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"message": message, "type": kind, "param": param, "code": code or CODES.get(status)}
    return OrjsonResponse({"error": body}, status_code=status, headers=headers)


def refused(e: CrossfadeError) -> OrjsonResponse:
    """Any of crossfade's errors in OpenAI's shape: its status, message, `param` and `code`
    (from the error's details) and Retry-After."""
    param, code = e.details.get("param"), e.details.get("code")
    return openai_error(e.status, str(e), param, code, e.headers() or None)


class OpenAIRoute(ShapedRoute):
    """Errors of these routes in OpenAI's shape: every error of proxy.errors with its status
    (and Retry-After), body parsing errors as OpenAI's 400."""

    def malformed(self, errors: list[Any], t0: float) -> Response:
        first = errors[0] if errors else {"msg": "invalid", "loc": ()}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or None
        if first.get("type") == "json_invalid":
            return openai_error(400, "The request body is not valid JSON.")
        return openai_error(400, f"Invalid value for '{where}': {first['msg']}", where)

    def http_error(self, e: HTTPException, t0: float) -> Response:
        return openai_error(e.status_code, str(e.detail))  # FastAPI's: a body it could not read

    def refused(self, e: CrossfadeError, t0: float) -> Response:
        return refused(e)


class UnknownModel(NotFound):
    def __init__(self, name: str, served: Sequence[str]) -> None:
        super().__init__(
            f"The model `{name[:200]}` does not exist here: this proxy serves the migration's "
            f"models {', '.join(served)} (their names or fingerprint ids)",
            param="model",
            code="model_not_found",
        )


# -- requests and answers -------------------------------------------------------------------


class EmbeddingsRequest(StrictBody):
    input: Text | list[Text] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts (token ids are refused: send strings)."
    )
    model: str = Field(
        description="The name of `models.old` or `models.new` (or its fingerprint id)."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes."
    )
    dimensions: int | None = Field(
        None, description="Only the model's own dimension (vectors are never truncated)."
    )
    user: str | None = Field(None, description="Accepted and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    side: Literal["old", "new"]
    fingerprint: str
    dimensions: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": OpenAIError} for s in statuses}


router = APIRouter(route_class=OpenAIRoute, tags=["embeddings (OpenAI's API)"])


def side_of(sv: Services, name: str) -> str:
    """The side whose model `name` names (its configured name or its fingerprint id)."""
    fps = {side: sv.rt.model(side).fingerprint for side in SIDES}
    by_id = [side for side, fp in fps.items() if name == fp.id]
    by_name = [side for side, fp in fps.items() if name == fp.name]
    if by_id or len(by_name) == 1:
        return (by_id or by_name)[0]
    if by_name:  # one name, two models (a hosted model changed under its name)
        raise BadRequest(
            f"both models are named {name!r}: name one by its fingerprint id "
            f"({', '.join(fp.id for fp in fps.values())})",
            param="model",
        )
    raise UnknownModel(name, [fp.name for fp in fps.values()])


def card(sv: Services, side: str) -> dict[str, Any]:
    fp = sv.rt.model(side).fingerprint
    return {
        "id": fp.name,
        "object": "model",
        "created": 0,
        "owned_by": OWNER,
        "side": side,
        "fingerprint": fp.id,
        "dimensions": fp.dim,
    }


def texts_of(sv: Services, body: EmbeddingsRequest) -> list[str]:
    """The request's texts, within the bounds; token ids refused."""
    given = [body.input] if isinstance(body.input, str) else body.input
    if not given:
        raise BadRequest("'input' is empty: send a text or a list of texts", param="input")
    if not all(isinstance(t, str) for t in given):
        raise BadRequest(TOKEN_IDS, param="input", code="token_ids_not_supported")
    texts: list[str] = given  # type: ignore[assignment]
    vc = sv.settings.vector_clients
    if len(texts) > vc.embeddings_max_inputs:
        raise BadRequest(
            f"{len(texts)} inputs in one request; at most {vc.embeddings_max_inputs} "
            "(vector_clients.embeddings_max_inputs)",
            param="input",
        )
    chars = sum(len(t) for t in texts)
    if chars > vc.embeddings_max_chars:
        raise TooLarge(
            f"{chars} characters in one request; at most {vc.embeddings_max_chars} "
            "(vector_clients.embeddings_max_chars)",
            param="input",
        )
    return texts


def embed(model: Embedder, texts: list[str]) -> tuple[np.ndarray, int]:
    """`texts` embedded as documents (the vectors crossfade writes for them; a hosted model
    with its retries and limits), and the tokens: billed, or counted by its tokenizer."""
    model.configure_thread()  # the default pool's threads: pin the model's thread count
    billed = model.embed_billed(texts)
    return billed.vectors, billed.tokens or sum(count_tokens(model, texts))


def encoded(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    # float32 values as the float64 numbers they are exactly: they parse back to the same
    # float32 (the key under which the vector is remembered), whoever reads them.
    return vector.astype(np.float64).tolist()  # type: ignore[no-any-return]


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=errors(400, 401, 403, 404, 413, 415, 503),
)
@access(Access.READ)
async def create_embeddings(sv: Svc, body: EmbeddingsRequest) -> OrjsonResponse:
    side = side_of(sv, body.model)
    model = sv.rt.model(side)
    fp = model.fingerprint
    if body.dimensions is not None and body.dimensions != fp.dim:
        raise BadRequest(
            f"{fp.name} gives {fp.dim}-dimensional vectors; 'dimensions' may only be {fp.dim} "
            "(crossfade never truncates: the vectors must be the ones in the index)",
            param="dimensions",
        )
    texts = texts_of(sv, body)

    def run() -> tuple[np.ndarray, int]:
        vectors, tokens = embed(model, texts)
        sv.remembered.remember(side, fp.id, texts, vectors)
        return vectors, tokens

    t0 = time.perf_counter()
    vectors, tokens = await asyncio.to_thread(run)
    # Counts only: the texts are the app's data and never logged.
    took_ms = (time.perf_counter() - t0) * 1000
    log.debug("/v1/embeddings: %d texts, %s model, %.1f ms", len(texts), side, took_ms)
    data = [
        {"object": "embedding", "index": i, "embedding": encoded(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return OrjsonResponse({"object": "list", "data": data, "model": fp.name, "usage": usage})


@router.get("/v1/models", response_model=ModelList, responses=errors(401, 403))
async def list_models(sv: Svc) -> dict[str, Any]:
    return {"object": "list", "data": [card(sv, side) for side in SIDES]}


# Any text as the name, a newline included (`path` stops before a trailing one: such a request
# would miss the route and get the router's 404 in another shape; found by the fuzzer).
@router.get("/v1/models/{model:doc_id}", response_model=ModelCard, responses=errors(401, 403, 404))
async def get_model(sv: Svc, model: str) -> dict[str, Any]:
    return card(sv, side_of(sv, model))
