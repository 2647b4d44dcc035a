"""ASGI middleware in front of every route: body size limit, admin guard, JSON bodies; and the
route template of a request (the label of the request counter)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.api.errors import error
from proxy.api.services import ADMIN_REFUSED
from proxy.security import check_bearer


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, counting the stream (a missing or lying
    Content-Length can't get past it)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await error(413, f"request body over {self.limit} bytes")(scope, receive, send)
        seen, over, started = 0, False, False

        async def limited() -> Message:
            nonlocal seen, over
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                over = True
                raise _TooLarge
            return msg

        async def sending(msg: Message) -> None:
            # FastAPI turns an error while it reads the body into its own 400: once the
            # stream passed the limit, whatever the app answers is replaced by the 413.
            nonlocal started
            if not over:
                started = started or msg["type"] == "http.response.start"
                await send(msg)

        try:
            await self.app(scope, limited, sending)
        except Exception:
            if not over:
                raise
        if over and not started:
            await error(413, f"request body over {self.limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass


class AdminGuard:
    """401 for admin paths without the right bearer key, before anything else runs: the body
    is neither read nor parsed for a caller without the key."""

    def __init__(self, app: ASGIApp, paths: set[str], key: str) -> None:
        self.app, self.paths, self.key = app, paths, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not check_bearer(auth.decode("latin-1") or None, self.key):
                return await error(401, ADMIN_REFUSED)(scope, receive, send)
        await self.app(scope, receive, send)


class JsonBodies:
    """Every body this API takes is JSON: read it as JSON whatever Content-Type says, so that
    `curl -d '{...}'` (which sends form encoding) works as users expect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def route_of(app: FastAPI, scope: Scope) -> str:
    """The route template a request matches ("/documents/{doc_id}"), or "unmatched"."""
    partial = "unmatched"
    for r in app.routes:
        match, _ = r.matches(scope)
        if match is Match.FULL:
            return str(getattr(r, "path", "unmatched"))
        if match is Match.PARTIAL and partial == "unmatched":  # the path, not the method: 405
            partial = str(getattr(r, "path", "unmatched"))
    return partial
