"""ASGI middleware in front of every route: body size limit and the gate (Host allow-list,
keys, JSON bodies); and the route template of a request (the label of the request counter)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.api.errors import OrjsonResponse, refused
from proxy.errors import (
    BadRequest,
    CrossfadeError,
    Forbidden,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from proxy.security import KIND, Access, Keyring, host_allowed, presented_key


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, counting the stream (a missing or lying
    Content-Length can't get past it)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def too_large(self) -> TooLarge:
        return TooLarge(f"request body over {self.limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await refused(self.too_large())(scope, receive, send)
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
            await refused(self.too_large())(scope, receive, send)


class _TooLarge(Exception):  # the stream passed the limit: stops the app's read
    pass


# Qdrant's own words first (src/common/auth: missing, invalid, read-only writing), then ours.
SEND_A_KEY = (
    "send it as the 'api-key' header or as 'Authorization: Bearer <key>' (Chroma clients: "
    "or 'X-Chroma-Token')"
)
NEEDS = {
    Access.READ: f"reads on this proxy need a key (any kind): {SEND_A_KEY}",
    Access.WRITE: f"this route changes data: it needs a read-write key or the admin key; "
    f"{SEND_A_KEY}",
    Access.ADMIN: f"admin endpoints need the admin key; {SEND_A_KEY}",
}
MISSING = "Must provide an API key or an Authorization bearer token"
UNKNOWN = "Invalid API key (not one of this proxy's keys)"
DENIED = {Access.WRITE: "Write access denied", Access.ADMIN: "Admin access denied"}
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SEND_JSON = (
    "request bodies must be JSON: send 'Content-Type: application/json' "
    "(curl: -H 'Content-Type: application/json')"
)


Refuse = Callable[[CrossfadeError], OrjsonResponse]
"""An error as a response, in the shape of one API (crossfade's, Qdrant's, OpenAI's)."""


class Gate:
    """Every request, before routing and before its body is read:

    1. its Host header must be allowed (server.allowed_hosts), else 400: a page that got
       a browser to resolve its own name to this address (DNS rebinding) is refused;
    2. the key its route needs (`access` marks: a read-write key or the admin key for
       writes, the admin key for admin routes, any key for reads when reads need one):
       401 without a key or with an unknown one, 403 with one of too little access;
    3. a state-changing request (POST, PUT, PATCH, DELETE) must declare `application/json`
       if it has a body, else 415: a cross-site form or `text/plain` POST (a CORS "simple
       request", no preflight) never reaches a route.

    Refusals are in the error shape of the route's API (Qdrant's for its surface, OpenAI's
    for the embeddings API). `routes`: each route of the app (in the router's order), what
    it needs, and how it refuses; a request that matches none (404, 405) needs no key and is
    refused in crossfade's shape."""

    def __init__(
        self,
        app: ASGIApp,
        routes: list[tuple[BaseRoute, Access, Refuse]],
        keys: Keyring,
        reads_need_key: bool,
        hosts: list[str],
    ) -> None:
        self.app, self.routes = app, routes
        self.keys, self.reads_need_key, self.hosts = keys, reads_need_key, hosts

    def route(self, scope: Scope) -> tuple[Access, Refuse]:
        for r, need, refuse in self.routes:
            if r.matches(scope)[0] is Match.FULL:
                return need, refuse
        return Access.OPEN, refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        need, refuse = self.route(scope)
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), None)
        if not host_allowed(host, self.hosts):
            shown = (host or "")[:100]
            message = (
                f"Host {shown!r} is not allowed here (server.allowed_hosts: "
                f"{', '.join(self.hosts)}); add it to server.allowed_hosts"
            )
            return await refuse(BadRequest(message))(scope, receive, send)
        if need is Access.READ and not self.reads_need_key:
            need = Access.OPEN
        if need is not Access.OPEN:
            key = presented_key(headers)
            granted = self.keys.grant(key)
            if granted is None:
                message = f"{MISSING if key is None else UNKNOWN}: {NEEDS[need]}"
                return await refuse(Unauthorized(message))(scope, receive, send)
            if granted < need:
                message = f"{DENIED[need]}: a {KIND[granted]} key can't do this; {NEEDS[need]}"
                return await refuse(Forbidden(message))(scope, receive, send)
        if scope["method"] in STATE_CHANGING:
            problem = body_problem(headers)
            if problem:
                return await refuse(UnsupportedMediaType(problem))(scope, receive, send)
        await self.app(scope, receive, send)


def body_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a state-changing request's body is refused (415), or None. A body must declare
    JSON; a request without a body may omit Content-Type (a bodiless DELETE or POST)."""
    ctype = length = chunked = None
    for k, v in headers:
        if k == b"content-type":
            ctype = v.decode("latin-1")
        elif k == b"content-length":
            length = v.strip()
        elif k == b"transfer-encoding":
            chunked = v
    if ctype is None:
        if chunked is None and (length is None or length == b"0"):
            return None
        return f"{SEND_JSON}; this one has a body and no Content-Type"
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        return f"{SEND_JSON}, not {ctype[:100]!r}"
    return None


def route_of(app: FastAPI, scope: Scope) -> str:
    """The route template a request matches ("/documents/{doc_id}"), or "unmatched"."""
    partial = "unmatched"
    for r in app.routes:
        match, _ = r.matches(scope)
        if match is Match.FULL:
            return str(getattr(r, "path_format", "unmatched"))
        if match is Match.PARTIAL and partial == "unmatched":  # the path, not the method: 405
            partial = str(getattr(r, "path_format", "unmatched"))
    return partial
