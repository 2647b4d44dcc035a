"""HTTP API (routes only: the work lives in search, store and migration)."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.config import Mode
from proxy.documents import delete_documents, upsert_documents
from proxy.filters import Filter
from proxy.ingest import MAX_TEXT_CHARS, CorpusError, parse_doc
from proxy.metrics import Metrics
from proxy.migration.state import HIT
from proxy.migration.status import migration_status
from proxy.migration.worker import Reembedder, set_control
from proxy.runtime import Runtime
from proxy.search import Searcher


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, description="Free-text query.")
    k: int = Field(10, ge=1, le=100, description="Number of results.")
    filter: Filter | None = Field(None, description="Conditions on document metadata.")
    with_text: bool = Field(True, description="Return each document's text.")
    mode: Mode | None = Field(None, description="Override the serving mode for this request.")
    reembed: bool = Field(
        True,
        description="Enqueue returned documents that have no new vector (lazy migration). "
        "Monitoring and evaluation traffic may turn this off.",
    )


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int = Field(description="Document id.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(min_length=1, max_length=256)


class BackfillControl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["pause", "resume"] | None = None
    backfill: bool | None = Field(None, description="Enable or disable the background sweep.")
    until: float | None = Field(
        None, ge=0, le=100, description="Stop the sweep at this coverage %."
    )


class Hit(BaseModel):
    doc_id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = {}
    ranks: dict[str, int | None]
    migrated: bool


class SearchResponse(BaseModel):
    mode: Mode
    coverage: float
    took_ms: float
    results: list[Hit]


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str, **extra: Any) -> OrjsonResponse:
    return OrjsonResponse({"error": message, **extra}, status_code=status)


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
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await error(413, f"request body over {self.limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(rt: Runtime) -> FastAPI:
    settings = rt.settings
    metrics = Metrics()
    state: dict[str, Any] = {"searcher": None}
    worker = Reembedder(rt)
    background: set[asyncio.Task[Any]] = set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        # Models load before the first request is accepted (uvicorn waits for startup).
        state["searcher"] = await asyncio.to_thread(rt.searcher)
        await asyncio.to_thread(state["searcher"].coverage.recount)
        task = asyncio.create_task(worker.run())
        yield
        task.cancel()
        await asyncio.gather(task, *background, return_exceptions=True)
        await asyncio.to_thread(rt.close)

    def enqueue_hits(doc_ids: list[str]) -> None:
        """Queue unmigrated hits off the response path (the queue is only an accelerator)."""
        if doc_ids:
            t = asyncio.create_task(asyncio.to_thread(rt.state.enqueue, doc_ids, HIT))
            background.add(t)
            t.add_done_callback(background.discard)

    app = FastAPI(
        title="crossfade",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=settings.server.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> OrjsonResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return error(400, "request body is not valid JSON", problems=problems)
        return error(422, "invalid request", problems=problems)

    def searcher() -> Searcher:
        s = state["searcher"]
        if s is None:
            raise RuntimeError("not started")
        return s

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> OrjsonResponse:
        s = state["searcher"]
        if s is None:
            return error(503, "models are loading")
        why = s.ready_for(settings.mode)
        if why:
            return error(503, why, ready=False)
        return OrjsonResponse({"ready": True, "mode": settings.mode, "coverage": s.coverage.value})

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses={400: {}, 413: {}, 422: {}, 503: {}},
    )
    async def search(req: SearchRequest, response: Response) -> Any:
        if not req.query.strip():
            return error(422, "query is blank", problems=[{"field": "body.query"}])
        if len(req.query) > settings.server.max_query_chars:
            return error(
                422,
                f"query longer than {settings.server.max_query_chars} characters",
                problems=[{"field": "body.query"}],
            )
        s = searcher()
        mode = req.mode or settings.mode
        why = s.ready_for(mode)
        if why:
            return error(503, why)
        t0 = time.perf_counter()
        fields = ("text", "metadata") if req.with_text else ("metadata",)
        res = await s.search(req.query, req.k, mode, req.filter, fields)
        took = time.perf_counter() - t0
        metrics.search_latency.labels(mode.value).observe(took)
        metrics.coverage.set(res.coverage)
        if req.reembed and mode is Mode.FUSED and settings.migration.lazy:
            enqueue_hits([h.doc_id for h in res.hits if not h.migrated])
        response.headers["X-Crossfade-Mode"] = mode.value
        response.headers["X-Crossfade-Coverage"] = f"{res.coverage:.4f}"
        return SearchResponse(
            mode=mode,
            coverage=round(res.coverage, 4),
            took_ms=round(took * 1000, 2),
            results=[
                Hit(
                    doc_id=h.doc_id,
                    score=round(h.score, 6),
                    text=res.payloads.get(h.doc_id, {}).get("text") if req.with_text else None,
                    metadata=res.payloads.get(h.doc_id, {}).get("metadata") or {},
                    ranks=h.ranks,
                    migrated=h.migrated,
                )
                for h in res.hits
            ],
        )

    @app.put("/documents", responses={400: {}, 413: {}, 422: {}, 503: {}})
    async def put_documents(body: DocumentsIn) -> Any:
        try:
            docs = [
                parse_doc(d.model_dump(), f"documents[{i}]") for i, d in enumerate(body.documents)
            ]
        except CorpusError as e:
            return error(422, str(e))
        if len({d.doc_id for d in docs}) != len(docs):
            return error(422, "duplicate ids in one batch")
        try:
            sides = await asyncio.to_thread(upsert_documents, rt, docs)
        except RuntimeError as e:
            return error(503, str(e))
        return {"upserted": len(docs), "indexes": sides}

    @app.delete("/documents/{doc_id}", responses={503: {}})
    async def delete_document(doc_id: str) -> Any:
        existed = await asyncio.to_thread(delete_documents, rt, [doc_id])
        return {"deleted": doc_id, "existed": existed}

    @app.get("/migration")
    async def get_migration() -> Any:
        return await asyncio.to_thread(migration_status, rt, worker)

    @app.post("/migration/backfill", responses={422: {}})
    async def backfill(body: BackfillControl) -> Any:
        set_control(rt.state, body.action, body.backfill, body.until)
        return (await asyncio.to_thread(migration_status, rt, worker))["control"]

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
