"""crossfade's error shape (`{"error": ..., ...}`) and the handlers that give every error it."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from proxy.errors import CrossfadeError
from proxy.store import IndexUnavailable


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> OrjsonResponse:
    return OrjsonResponse({"error": message, **extra}, status_code=status, headers=headers)


def refused(e: CrossfadeError) -> OrjsonResponse:
    """Any of crossfade's errors in crossfade's shape: its status, message, details and
    Retry-After."""
    return error(e.status, str(e), e.headers() or None, **e.details)


def noticed(request: Request, e: CrossfadeError) -> None:
    """What an error answered by a route tells the proxy: an index found unreachable is
    served without from now on (every route, either shape)."""
    if isinstance(e, IndexUnavailable):
        request.app.state.services.health.mark_down(e)


class ShapedRoute(APIRoute):
    """A route of an API whose errors have their own shape (Qdrant's, Chroma's, OpenAI's): a
    subclass says how a body that does not parse (`malformed`: FastAPI's validation errors),
    FastAPI's own HTTP errors (a body it could not read) and every error of proxy.errors
    (`refused`, with its status and Retry-After) look. `t0`: when the request began."""

    def malformed(self, errors: list[Any], t0: float) -> Response:
        raise NotImplementedError

    def http_error(self, e: StarletteHTTPException, t0: float) -> Response:
        raise NotImplementedError

    def refused(self, e: CrossfadeError, t0: float) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                return await handler(request)
            except RequestValidationError as e:
                return self.malformed(list(e.errors()), t0)
            except StarletteHTTPException as e:
                return self.http_error(e, t0)
            except CrossfadeError as e:
                noticed(request, e)
                return self.refused(e, t0)

        return route


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

    # Every error of proxy.errors raised by a route of crossfade's API (Qdrant's routes
    # render theirs in Qdrant's shape: proxy.api.qdrant.QdrantRoute).
    @app.exception_handler(CrossfadeError)
    async def crossfade_error(request: Request, exc: CrossfadeError) -> OrjsonResponse:
        noticed(request, exc)
        return refused(exc)
