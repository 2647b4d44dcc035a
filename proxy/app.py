"""The HTTP application: the routers of proxy/api composed, with their middleware."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from proxy.api import admin, documents, migration, operations, qdrant, search
from proxy.api.documents import DocumentIn, DocumentsIn
from proxy.api.errors import install_handlers
from proxy.api.lifecycle import lifespan
from proxy.api.middleware import AdminGuard, BodyLimit, JsonBodies, route_of
from proxy.api.search import SearchRequest, SearchResponse
from proxy.api.services import Services
from proxy.api.services import admin as admin_dependency
from proxy.metrics import RequestCounter
from proxy.runtime import Runtime

__all__ = ["DocumentIn", "DocumentsIn", "SearchRequest", "SearchResponse", "create_app"]


def create_app(rt: Runtime) -> FastAPI:
    sv = Services(rt)
    # Swagger UI's assets come from the package, not a CDN: /docs works offline.
    app = FastAPIOffline(title="crossfade", version="0.1.0", lifespan=lifespan)
    app.state.services = sv
    app.state.control = sv.control  # the serving pointer, for the start-up line
    install_handlers(app)
    # The routers' routes themselves, not include_router's lazy wrappers: the admin guard
    # and the request counter look routes up by path.
    for module in (operations, search, documents, migration, admin, qdrant):
        app.router.routes.extend(module.router.routes)
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, limit=rt.settings.server.max_body_bytes)
    if rt.settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=rt.settings.server.cors_origins, allow_methods=["*"]
        )
    admin_paths = {
        r.path
        for r in app.routes
        if isinstance(r, APIRoute) and any(d.dependency is admin_dependency for d in r.dependencies)
    }
    app.add_middleware(AdminGuard, paths=admin_paths, key=sv.key)
    # Outermost of all: counts the 401s and 413s the guards answer too.
    app.add_middleware(RequestCounter, metrics=sv.metrics, route_of=lambda sc: route_of(app, sc))
    return app
