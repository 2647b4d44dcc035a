"""Chroma's response shapes, its error shape (`{"error": <name>, "message": ...}`, the name
one chromadb maps to its exception: NotFoundError, InvalidArgumentError, ...), and what a
query's `distances` are.

Distances: a fused answer has no distance in any one space (its order is crossfade's fusion),
so each hit's distance is the one the app's own collection would have given it: the distance,
in `chroma_api.space`, between the query vector the app sent and the document's vector of the
same model (the old index's, for the app's own model). An app's distance threshold keeps its
meaning; the list is ranked by crossfade, so distances need not ascend. A hit whose vector of
that model is gone (after `migrate finish` retired the old index) has a null distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from proxy.api.errors import OrjsonResponse
from proxy.errors import CrossfadeError

# chromadb's names (chromadb.errors.error_types) by the status crossfade answers with.
NAMES = {
    400: "InvalidArgumentError",
    401: "AuthorizationError",
    403: "AuthError",
    404: "NotFoundError",
    413: "BatchSizeExceededError",
    415: "InvalidArgumentError",
    422: "InvalidArgumentError",
    429: "RateLimitError",
    500: "InternalError",
}


class ChromaError(BaseModel):
    error: str
    message: str


def failed(status: int, message: str, headers: dict[str, str] | None = None) -> OrjsonResponse:
    body = {"error": NAMES.get(status, "ChromaError"), "message": message}
    return OrjsonResponse(body, status_code=status, headers=headers)


def refused(e: CrossfadeError) -> OrjsonResponse:
    """Any of crossfade's errors in Chroma's shape: its status, message and Retry-After."""
    return failed(e.status, str(e), e.headers() or None)


def distances(space: str, query: np.ndarray, docs: Sequence[np.ndarray | None]) -> list[Any]:
    """Chroma's distance of each document vector from the query: cosine = 1 - cosine
    similarity, l2 = squared Euclidean, ip = 1 - inner product; None where there is none."""
    q = np.asarray(query, dtype=np.float32)
    out: list[Any] = []
    for d in docs:
        if d is None or d.shape != q.shape:
            out.append(None)
        elif space == "l2":
            out.append(float(np.sum((q - d) ** 2)))
        elif space == "ip":
            out.append(float(1.0 - np.dot(q, d)))
        else:
            norm = float(np.linalg.norm(q) * np.linalg.norm(d)) or 1.0
            out.append(float(1.0 - np.dot(q, d) / norm))
    return out


def columns(
    ids: list[str],
    views: dict[str, dict[str, Any]],
    vecs: dict[str, np.ndarray] | None,
    include: list[str],
) -> dict[str, Any]:
    """One result's columns (get, or one query of a batch): ids, and documents, metadatas,
    embeddings as `include` asks (null where not asked). Empty metadata is null, as in Chroma."""
    out: dict[str, Any] = {"ids": ids, "embeddings": None, "documents": None, "metadatas": None}
    if "documents" in include:
        out["documents"] = [views.get(i, {}).get("text") for i in ids]
    if "metadatas" in include:
        out["metadatas"] = [views.get(i, {}).get("metadata") or None for i in ids]
    if "embeddings" in include:
        got = vecs or {}
        out["embeddings"] = [got[i].tolist() if i in got else None for i in ids]
    return out


def get_result(cols: dict[str, Any], include: list[str]) -> dict[str, Any]:
    return {**cols, "uris": None, "include": include}


def query_result(
    results: list[dict[str, Any]], dists: list[list[Any]], include: list[str]
) -> dict[str, Any]:
    """A query's answer: each column a list with one entry per query embedding."""
    out: dict[str, Any] = {"ids": [r["ids"] for r in results]}
    for name in ("embeddings", "documents", "metadatas"):
        out[name] = [r[name] for r in results] if name in include else None
    out["uris"] = None
    out["distances"] = dists if "distances" in include else None
    out["include"] = include
    return out


class GetResponse(BaseModel):
    ids: list[str]
    embeddings: list[Any] | None
    documents: list[Any] | None
    metadatas: list[Any] | None
    uris: None
    include: list[str]


class QueryResponse(BaseModel):
    ids: list[list[str]]
    embeddings: list[Any] | None
    documents: list[Any] | None
    metadatas: list[Any] | None
    uris: None
    distances: list[Any] | None
    include: list[str]
