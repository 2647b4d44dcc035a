"""HTTP API (routes only: the work lives in search, store and migration)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.availability import DEGRADED_HEADER, Health, readiness, search_available
from proxy.beir import load_beir
from proxy.config import Mode
from proxy.documents import delete_documents, replay_journal, upsert_documents
from proxy.embedding import ModelUnavailable
from proxy.filters import Filter, StrictBody
from proxy.ingest import MAX_TEXT_CHARS, CorpusError, parse_doc
from proxy.metrics import Metrics, RequestCounter
from proxy.migration.canary import ModelDrift, accept_drift, check_canaries, drift_alarms
from proxy.migration.control import ControlPlane, available_actions
from proxy.migration.cutover import new_too_early, routing_dict, why_no_cutover
from proxy.migration.drift import drift_report
from proxy.migration.fitted import load_fit
from proxy.migration.history import History
from proxy.migration.plan import plan
from proxy.migration.state import HIT
from proxy.migration.status import migration_status
from proxy.migration.worker import Reembedder, control_state
from proxy.runtime import Runtime
from proxy.search import Searcher
from proxy.security import admin_key, check_bearer, redact_access_log
from proxy.store import IndexUnavailable

log = logging.getLogger("crossfade")
DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"


FORCE_NEW = (
    "Serve mode `new` even though the new index is below `cutover.min_coverage` (documents "
    "without a new vector are missing from its results); such answers are marked degraded."
)


class SearchRequest(StrictBody):
    query: str = Field(min_length=1, description="Free-text query.")
    k: int = Field(10, ge=1, le=100, description="Number of results.")
    filter: Filter | None = Field(None, description="Conditions on document metadata.")
    with_text: bool = Field(True, description="Return each document's text.")
    mode: Mode | None = Field(
        None, strict=False, description="Override the serving mode for this request."
    )
    force: bool = Field(False, description=FORCE_NEW)
    reembed: bool = Field(
        True,
        description="Enqueue returned documents that have no new vector (lazy migration). "
        "Monitoring and evaluation traffic may turn this off.",
    )


class DocumentIn(StrictBody):
    id: str | int = Field(description="Document id.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(StrictBody):
    documents: list[DocumentIn] = Field(min_length=1, max_length=256)


class ModeIn(StrictBody):
    mode: Mode = Field(strict=False)
    force: bool = Field(False, description=FORCE_NEW)
    actor: str | None = Field(None, max_length=200)


class SplitIn(StrictBody):
    mode: Mode | None = Field(
        None, strict=False, description="Mode for the split share; null clears it."
    )
    percent: float = Field(0.0, ge=0, le=100)
    force: bool = Field(False, description=FORCE_NEW)
    actor: str | None = Field(None, max_length=200)


class CutoverIn(StrictBody):
    beir: str | None = Field(None, description="BEIR dir of labelled queries (default: config).")
    split: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    force: bool = Field(False, description="Switch even if the gate refuses (recorded).")
    actor: str | None = Field(None, max_length=200)


class ActorIn(StrictBody):
    actor: str | None = Field(None, max_length=200)


class FinishIn(StrictBody):
    now: bool = Field(False, description="Skip the guard period after the cutover.")
    drop: bool = Field(False, description="Delete the old index/vector; false = keep it, unused.")
    actor: str | None = Field(None, max_length=200)


class BackfillControl(StrictBody):
    action: Literal["pause", "resume"] | None = None
    backfill: bool | None = Field(None, description="Enable or disable the background sweep.")
    until: float | None = Field(
        None, ge=0, le=100, description="Stop the sweep at this coverage %."
    )
    max_spend: float | None = Field(
        None, ge=0, description="Spend cap of the migration (0 = none); raise it to resume."
    )
    actor: str | None = Field(None, max_length=200)


class CanaryIn(StrictBody):
    action: Literal["check", "accept"] = Field(
        description="check: re-embed the canaries now; accept: lift a drift alarm (the "
        "canary is recorded afresh and vector writes naming the model are allowed again)."
    )
    actor: str | None = Field(None, max_length=200)


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
    degraded: str | None = Field(
        None,
        description="Present when served without an index the mode wants, e.g. 'old index "
        "unreachable', or by `new` below the cutover's coverage (also in the "
        "X-Crossfade-Degraded header).",
    )
    warnings: list[str] | None = Field(
        None,
        description="Present when the request may not mean what it says, e.g. a filter "
        "on a metadata key that no document has.",
    )


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str, **extra: Any) -> OrjsonResponse:
    return OrjsonResponse({"error": message, **extra}, status_code=status)


def refuse_new(why: str) -> str:
    return (
        f"mode new refused: {why} (cutover.min_coverage); documents without a new vector "
        "would be missing from its results. Send force: true to serve it anyway, marked degraded"
    )


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


ADMIN_REFUSED = "admin endpoints need 'Authorization: Bearer <admin key>'"


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


def create_app(rt: Runtime) -> FastAPI:
    settings = rt.settings
    metrics = Metrics()
    state: dict[str, Any] = {"searcher": None}
    worker = Reembedder(rt)
    control = ControlPlane(rt)
    key = admin_key(settings)
    background: set[asyncio.Task[Any]] = set()
    history = History()
    health = Health(rt.store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        redact_access_log()  # after uvicorn has configured its loggers
        # Models load before the first request is accepted (uvicorn waits for startup).
        state["searcher"] = await asyncio.to_thread(rt.searcher)
        await state["searcher"].coverage.refresh()
        await health.check()  # logs any index it cannot reach; serving starts regardless
        await asyncio.to_thread(recover_writes)
        tasks = [
            asyncio.create_task(worker.run()),
            asyncio.create_task(sample_history()),
            asyncio.create_task(watch_canaries()),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *background, return_exceptions=True)
        health.close()
        await asyncio.to_thread(rt.close)

    def recover_writes() -> None:
        """Finish document writes a crash cut short, before serving (see proxy/journal.py).
        If an index is unreachable now, the next write retries them first."""
        try:
            with rt.write_lock:
                n = replay_journal(rt)
            if n:
                log.warning("re-applied %d document write batch(es) left by a crash", n)
        except Exception as e:
            log.error("could not re-apply unfinished document writes yet: %s", e)

    lazy_cache: dict[str, float | bool] = {"at": float("-inf"), "on": True}
    canaries: dict[str, Any] = {"last": None}  # the last canary check, per hosted model

    def lazy_enabled() -> bool:
        """The persisted lazy switch, re-read at most once a second (not per request)."""
        if time.monotonic() - float(lazy_cache["at"]) > 1.0:
            lazy_cache["on"] = control_state(rt.state, settings.migration)["lazy"]
            lazy_cache["at"] = time.monotonic()
        return bool(lazy_cache["on"])

    def in_background(coro: Any) -> None:
        """Work that must not delay the response (enqueueing hits, shadow comparisons)."""
        t = asyncio.create_task(coro)
        background.add(t)
        t.add_done_callback(background.discard)

    # Swagger UI's assets come from the package, not a CDN: /docs works offline.
    app = FastAPIOffline(title="crossfade", version="0.1.0", lifespan=lifespan)
    app.state.control = control  # the serving pointer, for the start-up line
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, limit=settings.server.max_body_bytes)
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.server.cors_origins, allow_methods=["*"]
        )

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

    def admin(request: Request) -> None:
        """Dependency of every admin route (marks it for AdminGuard, which checks the key
        before the body is read; checked here again so a route can never miss it)."""
        if not check_bearer(request.headers.get("authorization"), key):
            raise HTTPException(401, ADMIN_REFUSED)

    guarded = [Depends(admin)]

    # Starlette's class: also the 404/405 of unknown routes and FastAPI's 400 for a body it
    # could not parse, so that every error has the same {"error": ...} shape.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        out = error(exc.status_code, str(exc.detail))
        out.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return out

    @app.exception_handler(IndexUnavailable)
    async def unavailable(request: Request, exc: IndexUnavailable) -> OrjsonResponse:
        health.mark_down(exc)
        return error(503, str(exc))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {}})
    async def readyz() -> OrjsonResponse:
        s = state["searcher"]
        if s is None:
            return error(503, "models are loading")
        indexes = await health.check()
        why, degraded = readiness(control.modes_in_use(), settings.fusion, indexes)
        report = {side: st.as_dict() for side, st in indexes.items()}
        if why:
            extra = {"degraded": degraded} if degraded else {}
            return error(503, why, ready=False, indexes=report, **extra)
        return OrjsonResponse(
            {
                "ready": True,
                "routing": routing_dict(control.routing),
                "coverage": s.coverage.value,
                "indexes": report,
            }
        )

    async def shadow_compare(query: str, served: list[str], flt: Filter | None) -> None:
        try:
            # Compared at the depth the client asked for (capped at 10): a k=5 request
            # against a new top-10 would cap the overlap at 0.5.
            k = max(1, min(10, len(served)))
            res = await searcher().search(query, k, Mode.NEW, flt, fields=())
        except IndexUnavailable as e:  # off the response path: a lost sample, nothing more
            health.mark_down(e)
            return
        except ModelUnavailable as e:
            health.mark_model_down(e)
            return
        o, r = control.shadow.record(served, [h.doc_id for h in res.hits], k)
        metrics.shadow_overlap.observe(o)
        metrics.shadow_rbo.observe(r)

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses={400: {}, 409: {}, 413: {}, 422: {}, 503: {}},
    )
    async def search(req: SearchRequest, request: Request) -> Any:
        if not req.query.strip():
            return error(422, "query is blank", problems=[{"field": "body.query"}])
        if len(req.query) > settings.server.max_query_chars:
            return error(
                422,
                f"query longer than {settings.server.max_query_chars} characters",
                problems=[{"field": "body.query"}],
            )
        s = searcher()
        client = request.headers.get(settings.routing.client_key_header)
        mode, generation = control.route(client, req.mode)
        early = (
            new_too_early(await s.coverage.get(), settings.cutover) if mode is Mode.NEW else None
        )
        if early and req.mode is Mode.NEW and not req.force:
            return error(409, refuse_new(early), problems=[{"field": "body.mode"}])
        t0 = time.perf_counter()
        fields = ("text", "metadata") if req.with_text else ("metadata",)
        res, served = await search_available(
            s,
            health,
            mode,
            req.query,
            req.k,
            req.filter,
            fields,
            bm25_alone=settings.server.bm25_when_model_down,
        )
        if res is None:
            return error(503, served.error or "no index to search")
        took = time.perf_counter() - t0
        warnings = await s.filter_warnings(req.filter, served.lists)
        metrics.search_latency.labels(mode.value).observe(took)
        if req.reembed and mode is Mode.FUSED and "new" in served.lists and lazy_enabled():
            unmigrated = [h.doc_id for h in res.hits if not h.migrated]
            if unmigrated:
                in_background(asyncio.to_thread(rt.state.enqueue, unmigrated, HIT))
        if (
            mode is Mode.SHADOW
            and not served.degraded
            and s.ready_for(Mode.NEW) is None
            and random.random() < settings.shadow.sample_rate
        ):
            in_background(shadow_compare(req.query, [h.doc_id for h in res.hits], req.filter))
        payloads = res.payloads
        body = {
            "mode": mode.value,
            "coverage": round(res.coverage, 4),
            "took_ms": round(took * 1000, 2),
            "results": [
                {
                    "doc_id": h.doc_id,
                    "score": round(h.score, 6),
                    "text": payloads.get(h.doc_id, {}).get("text") if req.with_text else None,
                    "metadata": payloads.get(h.doc_id, {}).get("metadata") or {},
                    "ranks": h.ranks,
                    "migrated": h.migrated,
                }
                for h in res.hits
            ],
        }
        headers = {
            "X-Crossfade-Mode": mode.value,
            "X-Crossfade-Generation": str(generation),
            "X-Crossfade-Coverage": f"{res.coverage:.4f}",
        }
        # New below the cutover's coverage (forced, by a switch or per request) is degraded.
        degraded = "; ".join(x for x in (served.degraded, early and f"new index {early}") if x)
        if degraded:
            body["degraded"] = headers[DEGRADED_HEADER] = degraded
        if warnings:
            body["warnings"] = warnings
        # Built by hand and serialised by orjson: the shape is SearchResponse (documented
        # above), without FastAPI validating it a second time on the hot path.
        return OrjsonResponse(body, headers=headers)

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
        except CorpusError as e:  # e.g. an id an adopted collection can't key a point by
            return error(422, str(e))
        except ModelDrift as e:  # the bilingual-write guard: an operator must decide
            return error(409, str(e))
        except RuntimeError as e:
            return error(503, str(e))
        return {"upserted": len(docs), "indexes": sides}

    @app.delete("/documents/{doc_id}", responses={503: {}})
    async def delete_document(doc_id: str) -> Any:
        try:
            existed = await asyncio.to_thread(delete_documents, rt, [doc_id])
        except RuntimeError as e:
            return error(503, str(e))
        return {"deleted": doc_id, "existed": existed}

    async def full_status() -> dict[str, Any]:
        out = await asyncio.to_thread(migration_status, rt, worker, searcher())
        history.record_status(out)
        out["routing"] = routing_dict(control.routing)
        out["actions"] = available_actions(
            control.routing,
            control.rollback_to,
            out["indexes"]["new"]["coverage"],
            settings.cutover,
            out["control"]["paused"],
        )
        out["shadow"] = control.shadow.summary()
        out["canary"] = canaries["last"]
        out["last_gate"] = control.last_gate
        return out

    @app.get("/migration")
    async def get_migration() -> Any:
        return await full_status()

    async def sample_history() -> None:
        """Coverage points for the dashboard's chart even when nobody is looking: the
        searcher's coverage counts (recounted only if stale), the queue depth and the rate."""
        while True:
            # A failed sample is a gap in a chart, never a crash.
            with suppress(Exception):
                cov = searcher().coverage
                await cov.get()
                depth = await asyncio.to_thread(rt.state.depth)
                rate = round(worker.stats.rate(), 2)
                history.record(round(cov.value, 4), cov.migrated, cov.total, depth["total"], rate)
            with suppress(Exception):  # a fit stored by `crossfade tune` serves from here on
                searcher().fitted = await asyncio.to_thread(load_fit, rt.state, rt.fingerprints())
            await asyncio.sleep(settings.server.history_interval_s)

    async def watch_canaries() -> None:
        """Re-embed each hosted model's canary at start-up and every `canary_interval_s`
        (the shortest of the hosted models'; 0 = at start-up only)."""
        hosted = [m for m in (settings.models.old, settings.models.new) if m.kind == "openai"]
        if not hosted:
            return
        intervals = [m.canary_interval_s for m in hosted if m.canary_interval_s > 0]
        while True:
            try:
                canaries["last"] = await asyncio.to_thread(check_canaries, rt)
            except Exception as e:  # a failed check is reported, never a crash
                canaries["last"] = {"error": str(e)}
            if not intervals:
                return
            await asyncio.sleep(min(intervals))

    @app.get("/migration/history")
    async def get_history(since: float = 0.0) -> Any:
        """Coverage samples (unix time `t`) newer than `since`, oldest first."""
        return {"samples": history.since(since)}

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD.read_text(), headers={"Cache-Control": "no-store"})

    @app.get("/drift")
    async def drift() -> Any:
        return await asyncio.to_thread(drift_report, rt, control.modes_in_use())

    @app.post(
        "/migration/backfill",
        responses={400: {}, 401: {}, 413: {}, 422: {}},
        dependencies=guarded,
    )
    async def backfill(body: BackfillControl) -> Any:
        return await asyncio.to_thread(
            control.steer_backfill,
            body.actor or "admin",
            body.action,
            body.backfill,
            body.until,
            body.max_spend,
        )

    @app.get("/admin/routing", responses={401: {}}, dependencies=guarded)
    async def get_routing() -> Any:
        return routing_dict(control.routing)

    @app.post(
        "/admin/mode",
        responses={400: {}, 401: {}, 409: {}, 413: {}, 422: {}},
        dependencies=guarded,
    )
    async def set_mode(body: ModeIn) -> Any:
        why = await refusal(body.mode, body.force)
        if why:
            return error(409, why)
        target = replace(control.routing, mode=body.mode)
        action = "set mode (forced)" if forced(body.mode, body.force) else "set mode"
        return await control.switch(target, action, body.actor or "admin")

    async def refusal(mode: Mode, force: bool) -> str | None:
        """Why a switch to `mode` is refused: its index missing, or `new` below the
        cutover's coverage without force."""
        why = searcher().ready_for(mode)
        if why or mode is not Mode.NEW or force:
            return why
        early = new_too_early(await searcher().coverage.refresh(), settings.cutover)
        return refuse_new(early) if early else None

    def forced(mode: Mode | None, force: bool) -> bool:
        """Whether force made the difference (recorded in the audit log as such)."""
        early = new_too_early(searcher().coverage.value, settings.cutover)
        return force and mode is Mode.NEW and early is not None

    @app.post(
        "/admin/split",
        responses={400: {}, 401: {}, 409: {}, 413: {}, 422: {}},
        dependencies=guarded,
    )
    async def set_split(body: SplitIn) -> Any:
        if body.mode is not None and body.percent > 0:
            why = await refusal(body.mode, body.force)
            if why:
                return error(409, why)
        target = replace(
            control.routing,
            split_mode=body.mode,
            split_percent=body.percent if body.mode else 0.0,
        )
        split_mode = body.mode if body.percent > 0 else None
        action = "set split (forced)" if forced(split_mode, body.force) else "set split"
        return await control.switch(target, action, body.actor or "admin")

    @app.post(
        "/admin/cutover",
        responses={400: {}, 401: {}, 409: {}, 413: {}, 422: {}},
        dependencies=guarded,
    )
    async def cutover(body: CutoverIn) -> Any:
        configured = settings.cutover.eval_set
        beir = body.beir or (str(settings.data_path(configured)) if configured else None)
        data = None
        if beir:
            try:
                data = await asyncio.to_thread(
                    load_beir, beir, body.split or settings.cutover.eval_split, False
                )
            except (OSError, ValueError) as e:
                return error(422, f"cannot read labelled queries from {beir!r}: {e}")
        why = searcher().ready_for(Mode.NEW) or why_no_cutover(control.routing)
        if why:
            return error(409, why)
        ok, result = await control.cutover(searcher(), data, body.force, body.actor or "admin")
        return result if ok else error(409, "cutover refused by the gate", gate=result)

    @app.post(
        "/admin/rollback",
        responses={400: {}, 401: {}, 409: {}, 413: {}, 422: {}},
        dependencies=guarded,
    )
    async def rollback(body: ActorIn | None = None) -> Any:
        ok, result = await control.rollback((body.actor if body else None) or "admin")
        return result if ok else error(409, result["error"])

    @app.post(
        "/admin/finish",
        responses={400: {}, 401: {}, 409: {}, 413: {}, 422: {}},
        dependencies=guarded,
    )
    async def finish(body: FinishIn | None = None) -> Any:
        body = body or FinishIn()
        ok, result = await control.finish(body.actor or "admin", body.now, body.drop)
        return result if ok else error(409, result["error"])

    @app.post(
        "/admin/canary",
        responses={400: {}, 401: {}, 413: {}, 422: {}},
        dependencies=guarded,
    )
    async def canary(body: CanaryIn) -> Any:
        """`check`: re-embed the hosted models' canaries now; `accept`: the operator's
        decision that a drift is harmless (canary recorded afresh, writes allowed again)."""
        if body.action == "check":
            canaries["last"] = await asyncio.to_thread(check_canaries, rt)
            return {"checked": canaries["last"], "drift": drift_alarms(rt)}
        lifted = await asyncio.to_thread(accept_drift, rt)
        await asyncio.to_thread(
            control.audit.append,
            {"action": "canary accept", "actor": body.actor or "admin", "lifted": lifted},
        )
        return {"lifted": lifted, "drift": drift_alarms(rt)}

    @app.get("/admin/plan", responses={401: {}}, dependencies=guarded)
    async def get_plan(sample: int | None = None) -> Any:
        return await asyncio.to_thread(
            plan, rt, sample if sample is None else max(8, min(sample, 10_000))
        )

    @app.get("/admin/audit", responses={401: {}}, dependencies=guarded)
    async def audit(n: int = 50) -> Any:
        return await asyncio.to_thread(control.audit.tail, max(1, min(n, 1000)))

    @app.get(
        "/metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        status = await full_status()
        metrics.update(status)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    admin_paths = {
        r.path
        for r in app.routes
        if isinstance(r, APIRoute) and any(d.dependency is admin for d in r.dependencies)
    }
    app.add_middleware(AdminGuard, paths=admin_paths, key=key)
    # Outermost of all: counts the 401s and 413s the guards answer too.
    app.add_middleware(RequestCounter, metrics=metrics, route_of=lambda sc: route_of(app, sc))
    return app


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
