"""The HTTP application: the routers of proxy/api composed, with their middleware."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.routing import BaseRoute

from proxy.api import (
    admin,
    chroma,
    documents,
    embeddings,
    migration,
    operations,
    qdrant,
    search,
)
from proxy.api.chroma import ChromaRoute
from proxy.api.documents import DocumentIn, DocumentsIn
from proxy.api.embeddings import OpenAIRoute
from proxy.api.errors import install_handlers, refused
from proxy.api.lifecycle import lifespan
from proxy.api.middleware import STATE_CHANGING, BodyLimit, Gate, Refuse, route_of
from proxy.api.qdrant import QdrantRoute
from proxy.api.search import SearchRequest, SearchResponse
from proxy.api.services import Services
from proxy.api.services import admin as admin_dependency
from proxy.chroma_api.answers import refused as chroma_refused
from proxy.metrics import RequestCounter
from proxy.qdrant_api.answers import refused as qdrant_refused
from proxy.runtime import Runtime
from proxy.security import Access, allowed_hosts, reads_need_key

__all__ = ["DocumentIn", "DocumentsIn", "SearchRequest", "SearchResponse", "create_app"]


def need_of(route: BaseRoute) -> Access:
    """What one of crossfade's routes needs: the admin dependency, an `access` mark on its
    endpoint, or by method (GET reads; anything else writes: a new POST route is closed
    until it is marked)."""
    if not isinstance(route, APIRoute):
        return Access.WRITE
    if any(d.dependency is admin_dependency for d in route.dependencies):
        return Access.ADMIN
    marked = getattr(route.endpoint, "access", None)
    if marked is not None:
        return Access(marked)
    return Access.WRITE if route.methods & STATE_CHANGING else Access.READ


def shape_of(route: BaseRoute) -> Refuse:
    """How the gate refuses a request to `route`: in the shape of the route's API (Qdrant's
    for its surface, Chroma's for its, OpenAI's for the embeddings API, crossfade's
    elsewhere)."""
    if isinstance(route, QdrantRoute):
        return qdrant_refused
    if isinstance(route, OpenAIRoute):
        return embeddings.refused
    if isinstance(route, ChromaRoute):
        return chroma_refused
    return refused


def document_refusals(route: APIRoute, need: Access) -> None:
    """The gate's answers in the route's OpenAPI responses (clients and the schema fuzzing
    see every status a route can give)."""
    extra: dict[int, str] = {400: "Host not allowed (server.allowed_hosts)"}
    if need is not Access.OPEN:
        extra |= {401: "No key, or an unknown one", 403: "A key of too little access"}
    if route.methods & STATE_CHANGING:
        extra[415] = "A body that is not declared application/json"
    for status, description in extra.items():
        route.responses.setdefault(status, {"description": description})


def create_app(rt: Runtime) -> FastAPI:
    sv = Services(rt)
    server = rt.settings.server
    # Swagger UI's assets come from the package, not a CDN: /docs works offline.
    app = FastAPIOffline(title="crossfade", version="0.1.0", lifespan=lifespan)
    app.state.services = sv
    app.state.control = sv.control  # the serving pointer, for the start-up line
    install_handlers(app)
    docs = list(app.routes)  # the framework's: /openapi.json, /docs, /redoc and their assets
    # The routers' routes themselves, not include_router's lazy wrappers: the gate and the
    # request counter look routes up by path.
    for module in (operations, search, documents, migration, admin, qdrant, chroma, embeddings):
        app.router.routes.extend(module.router.routes)
    table = []
    for r in app.routes:
        need = Access.OPEN if any(r is d for d in docs) else need_of(r)
        if isinstance(r, APIRoute):
            document_refusals(r, need)
        table.append((r, need, shape_of(r)))
    app.add_middleware(BodyLimit, limit=server.max_body_bytes)
    app.add_middleware(
        Gate,
        routes=table,
        keys=sv.keys,
        reads_need_key=reads_need_key(server),
        hosts=allowed_hosts(server),
    )
    # CORS stays off unless origins are configured; a configured origin may send keys.
    if server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_origins,
            allow_methods=["*"],
            allow_headers=[
                "api-key",
                "authorization",
                "x-chroma-token",
                rt.settings.routing.client_key_header,
            ],
        )
    # Outermost of all: counts the 400s, 401s, 403s, 413s and 415s the guards answer too.
    app.add_middleware(RequestCounter, metrics=sv.metrics, route_of=lambda sc: route_of(app, sc))
    return app
