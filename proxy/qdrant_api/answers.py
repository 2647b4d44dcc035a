"""Qdrant's response shapes: `{"result": ..., "status": "ok", "time": s}` and, for errors,
`{"status": {"error": "..."}, "time": s}` with Qdrant's status codes (qdrant-client raises
its usual UnexpectedResponse on them)."""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel

from proxy.api.errors import OrjsonResponse
from proxy.errors import CrossfadeError
from proxy.store import IndexUnavailable

# The REST API served is qdrant-client's of this version (its models parse every request).
API_VERSION = version("qdrant-client")


class QdrantStatus(BaseModel):
    error: str


class QdrantError(BaseModel):
    status: QdrantStatus
    time: float


class QdrantOk(BaseModel):
    result: Any
    status: str
    time: float


def ok(result: Any, t0: float, headers: dict[str, str] | None = None) -> OrjsonResponse:
    body = {"result": result, "status": "ok", "time": round(time.perf_counter() - t0, 6)}
    return OrjsonResponse(body, headers=headers)


def failed(
    status: int, message: str, t0: float | None = None, headers: dict[str, str] | None = None
) -> OrjsonResponse:
    took = round(time.perf_counter() - t0, 6) if t0 is not None else 0.0
    body = {"status": {"error": message}, "time": took}
    return OrjsonResponse(body, status_code=status, headers=headers)


def refused(e: CrossfadeError, t0: float | None = None) -> OrjsonResponse:
    """Any of crossfade's errors in Qdrant's shape: its status, message and Retry-After (an
    unreachable index in Qdrant's words, "Service unavailable: ...")."""
    message = f"Service unavailable: {e}" if isinstance(e, IndexUnavailable) else str(e)
    return failed(e.status, message, t0, e.headers() or None)


def not_found(collection: str) -> str:
    return f"Not found: Collection `{collection}` doesn't exist!"


ERRORS = {
    400: {"model": QdrantError, "description": "Bad request (Qdrant's error shape)"},
    404: {"model": QdrantError, "description": "No such collection"},
    413: {"description": "Request body too large"},
    503: {"model": QdrantError, "description": "An index the answer needs is unreachable"},
}
WRITE_ERRORS = {
    **ERRORS,
    409: {"model": QdrantError, "description": "A model drifted: writes wait for the operator"},
}
