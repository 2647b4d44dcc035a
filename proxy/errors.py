"""crossfade's exceptions: one tree whose errors carry the HTTP status they are answered with.

    CrossfadeError                 500  the root (a config that can't be used: ConfigError)
      BadRequest                   400  a request crossfade can't serve as asked (Unsupported)
      Unauthorized                 401  no key, or an unknown one
      Forbidden                    403  a key of too little access; the retired old index
      NotFound                     404  no such collection
      Conflict                     409  refused until an operator decides (ModelDrift, ...)
      TooLarge                     413  a request body over server.max_body_bytes
      UnsupportedMediaType         415  a state-changing body that is not JSON
      Invalid                      422  a well-formed request that can't be applied (CorpusError)
      Unavailable                  503  an index or model down, a write waiting on the journal

A module raises the error of its concept (`IndexUnavailable`, `CorpusError`, ...), based on one
of these; the API renders any of them in one place per shape (proxy/api/errors.py for
crossfade's `{"error": ...}`, proxy/api/qdrant.py's route class for Qdrant's), with its status
and, when set, a Retry-After header. A leaf: it imports nothing from proxy.
"""

from __future__ import annotations

import math
from typing import Any


class CrossfadeError(Exception):
    """An error with the HTTP status it is answered with (`status`: the class's, or one given
    to the instance), `retry_after_s` when retrying later can succeed, and `details`: more
    fields of crossfade's error body (e.g. `problems`; Qdrant's shape has no room for them)."""

    status: int = 500
    retry_after_s: float | None = None

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        self.details = details

    def headers(self) -> dict[str, str]:
        """The answer's headers: Retry-After (whole seconds, at least 1) when it is set."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class BadRequest(CrossfadeError):
    status = 400


class Unauthorized(CrossfadeError):
    status = 401


class Forbidden(CrossfadeError):
    status = 403


class NotFound(CrossfadeError):
    status = 404


class Conflict(CrossfadeError):
    status = 409


class TooLarge(CrossfadeError):
    status = 413


class UnsupportedMediaType(CrossfadeError):
    status = 415


class Invalid(CrossfadeError):
    status = 422


class Unavailable(CrossfadeError):
    status = 503
