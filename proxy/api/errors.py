"""crossfade's error shape (`{"error": ..., ...}`) and the handlers that give every error it."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.store import IndexUnavailable


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> OrjsonResponse:
    return OrjsonResponse({"error": message, **extra}, status_code=status, headers=headers)


def refuse_new(why: str) -> str:
    return (
        f"mode new refused: {why} (cutover.min_coverage); documents without a new vector "
        "would be missing from its results. Send force: true to serve it anyway, marked degraded"
    )


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return error(400, "request body is not valid JSON", problems=problems)
        return error(422, "invalid request", problems=problems)

    # Starlette's class: also the 404/405 of unknown routes and FastAPI's 400 for a body it
    # could not parse, so that every error has the same {"error": ...} shape.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        out = error(exc.status_code, str(exc.detail))
        out.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return out

    @app.exception_handler(IndexUnavailable)
    async def unavailable(request: Request, exc: IndexUnavailable) -> OrjsonResponse:
        request.app.state.services.health.mark_down(exc)
        return error(503, str(exc))
