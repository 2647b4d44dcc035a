"""POST /search, and `serve_search`: the routed, degraded-aware search every query route runs
(this one and Qdrant's query API) with its side effects (lazy re-embedding, shadow samples)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from proxy.adapter import usable
from proxy.api.errors import OrjsonResponse, refuse_new
from proxy.api.services import Services, Svc, access
from proxy.availability import search_available
from proxy.config import Mode
from proxy.errors import BadRequest, Conflict, Forbidden, Invalid, Unavailable
from proxy.filters import Filter, StrictBody
from proxy.migration.cutover import new_too_early
from proxy.migration.finish import retired
from proxy.model import ModelUnavailable
from proxy.search import SearchResult
from proxy.security import Access
from proxy.state import HIT
from proxy.store import IndexUnavailable, VectorStore

router = APIRouter()

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


def migration_headers(
    mode: Mode, generation: int, coverage: float, degraded: str | None = None
) -> dict[str, str]:
    """crossfade's migration headers, on every answer of a search and of Qdrant's API: the
    mode served, the routing's generation, the new index's coverage, and why the answer is
    degraded when it is."""
    out = {
        "X-Crossfade-Mode": mode.value,
        "X-Crossfade-Generation": str(generation),
        "X-Crossfade-Coverage": f"{coverage:.4f}",
    }
    if degraded:
        out["X-Crossfade-Degraded"] = degraded
    return out


@dataclass
class Served:
    mode: Mode
    generation: int
    result: SearchResult
    lists: tuple[str, ...]
    took: float
    degraded: str
    # Which path served the query: its text (`text`: sent as text, or a vector crossfade
    # returned from /v1/embeddings), or an app's own vector (`vector-adapted`: the old index
    # and the new one through the query map; `vector-old`: the old index alone;
    # `vector-new`: a new-model vector, the new index alone).
    query: str = "text"

    def headers(self) -> dict[str, str]:
        out = migration_headers(self.mode, self.generation, self.result.coverage, self.degraded)
        out["X-Crossfade-Query"] = self.query
        return out


async def serve_search(
    sv: Services,
    request: Request,
    query: str,
    k: int,
    flt: Any,
    fields: tuple[str, ...],
    mode: Mode | None = None,
    force: bool = False,
    reembed: bool = True,
) -> Served:
    """Route the request to a mode, search what answers, enqueue unmigrated hits, sample the
    shadow comparison. `flt`: crossfade's filter (or the tree Qdrant's filter maps to)."""
    s, settings, control = sv.searcher, sv.settings, sv.control
    client = request.headers.get(settings.routing.client_key_header)
    served_mode, generation = control.route(client, mode)
    if served_mode is not Mode.NEW and sv.retired.get():
        # After `migrate finish --keep` the old index stays on disk, unused: no longer written
        # (its answers can be stale), so only the operator may still read it, to compare.
        if not sv.is_admin(request):
            raise Forbidden(retired_refusal(served_mode), problems=[{"field": "body.mode"}])
        reembed = False  # nothing is migrating any more
    early = (
        new_too_early(await s.coverage.get(), settings.cutover) if served_mode is Mode.NEW else None
    )
    if early and mode is Mode.NEW and not force:
        raise Conflict(refuse_new(early), problems=[{"field": "body.mode"}])
    t0 = time.perf_counter()
    res, plan = await search_available(
        s,
        sv.health,
        served_mode,
        query,
        k,
        flt,
        fields,
        bm25_alone=settings.server.bm25_when_model_down,
    )
    if res is None:
        raise Unavailable(plan.error or "no index to search")
    took = time.perf_counter() - t0
    sv.metrics.search_latency.labels(served_mode.value).observe(took)
    if reembed:
        enqueue_unmigrated(sv, served_mode, plan.lists, res)
    if (
        served_mode is Mode.SHADOW
        and not plan.degraded
        and s.ready_for(Mode.NEW) is None
        and random.random() < settings.shadow.sample_rate
    ):
        sv.in_background(shadow_compare(sv, query, [h.doc_id for h in res.hits], flt))
    # New below the cutover's coverage (forced, by a switch or per request) is degraded.
    degraded = "; ".join(
        x for x in (plan.degraded, early and f"new index {early}", control.stale()) if x
    )
    return Served(served_mode, generation, res, plan.lists, took, degraded)


def enqueue_unmigrated(sv: Services, mode: Mode, lists: tuple[str, ...], res: SearchResult) -> None:
    """Lazy migration: the hits without a new vector are re-embedded first."""
    if mode is Mode.FUSED and "new" in lists and sv.lazy_enabled():
        unmigrated = [h.doc_id for h in res.hits if not h.migrated]
        if unmigrated:
            sv.in_background(asyncio.to_thread(sv.rt.state.enqueue, unmigrated, HIT))


async def serve_vector(
    sv: Services,
    request: Request,
    vector: np.ndarray,
    side: str,
    k: int,
    flt: Any,
    fields: tuple[str, ...],
) -> Served:
    """A query an app sent as a vector. One crossfade returned from /v1/embeddings is served
    as its text (fused, BM25, lazy re-embeds: as `serve_search`). Another is the app's own
    model's (`side`: which index's vector name and dimension it fits; the old one's when both
    do): an old-model vector is searched in the old index and, through the query map while
    its fidelity passes, in the new one, fused; a new-model vector in the new index."""
    known = sv.remembered.recall(vector)
    if known is not None and query_problem(sv, known.text) is None:
        return await serve_search(sv, request, known.text, k, flt, fields)
    s, cfg = sv.searcher, sv.settings.vector_clients
    client = request.headers.get(sv.settings.routing.client_key_header)
    mode, generation = sv.control.route(client, None)
    qmap = sv.query_map if usable(sv.query_map, cfg) else None  # bound: see load_map
    if side == "new":
        lists, path = ("new",), "vector-new"
    elif sv.retired.get():
        if cfg.after_finish == "refuse" or qmap is None:
            raise BadRequest(after_finish_refusal(sv, qmap is None))
        lists, path = ("new",), "vector-adapted"
    elif mode in (Mode.OLD, Mode.SHADOW) or qmap is None or s.ready_for(Mode.FUSED):
        lists, path = ("old",), "vector-old"
    else:
        lists, path = ("old", "new"), "vector-adapted"
    mapped = vector if side == "new" else qmap.apply(vector) if qmap and "new" in lists else None
    t0, degraded = time.perf_counter(), ""
    try:
        res = await s.search_vector(vector, mapped, k, mode, lists, flt, fields)
    except IndexUnavailable as e:
        sv.health.mark_down(e)
        if lists != ("old", "new") or e.side != "new":
            raise Unavailable(str(e)) from e
        lists, path, degraded = ("old",), "vector-old", "new index unreachable"
        res = await s.search_vector(vector, None, k, mode, lists, flt, fields)
    took = time.perf_counter() - t0
    sv.metrics.search_latency.labels(mode.value).observe(took)
    enqueue_unmigrated(sv, mode, lists, res)
    degraded = "; ".join(x for x in (degraded, sv.control.stale()) if x)
    return Served(mode, generation, res, lists, took, degraded, query=path)


def vector_side(sv: Services, dim: int) -> str | None:
    """Which model of the migration an app's query vector of `dim` dimensions comes from: the
    app's own (`vector_clients.app_model`, the old one until the app moves) when it fits, else
    the other one's if that fits; None if neither does."""
    app = sv.settings.vector_clients.app_model
    for side in (app, "new" if app == "old" else "old"):
        if sv.rt.model(side).fingerprint.dim == dim:
            return side
    return None


def read_store(sv: Services) -> VectorStore:
    """The index an app's reads by id or filter come from (Qdrant's and Chroma's APIs): its own
    (old) collection while it is live (every write through the proxy reaches it), the new one
    after `migrate finish`."""
    if retired(sv.rt) or sv.rt.store("old").info() is None:
        return sv.rt.store("new")
    return sv.rt.store("old")


def status_headers(sv: Services) -> dict[str, str]:
    """crossfade's migration headers for answers that are not a routed search."""
    routing = sv.control.routing
    return migration_headers(routing.mode, routing.generation, sv.searcher.coverage.value)


def after_finish_refusal(sv: Services, no_map: bool) -> str:
    models = sv.settings.models
    why = (
        "no query map passes its fidelity threshold"
        if no_map
        else "vector_clients.after_finish is 'refuse'"
    )
    return (
        f"a query vector of the old model ({models.old.name}) can't be served: the migration "
        f"finished and {why}. Embed queries with {models.new.name}, or send the text (a "
        "Document, or take vectors from crossfade's /v1/embeddings)"
    )


async def shadow_compare(sv: Services, query: str, served: list[str], flt: Any) -> None:
    try:
        # Compared at the depth the client asked for (capped at 10): a k=5 request against
        # a new top-10 would cap the overlap at 0.5.
        k = max(1, min(10, len(served)))
        res = await sv.searcher.search(query, k, Mode.NEW, flt, fields=())
    except IndexUnavailable as e:  # off the response path: a lost sample, nothing more
        sv.health.mark_down(e)
        return
    except ModelUnavailable as e:
        sv.health.mark_model_down(e)
        return
    o, r = sv.control.shadow.record(served, [h.doc_id for h in res.hits], k)
    sv.metrics.shadow_overlap.observe(o)
    sv.metrics.shadow_rbo.observe(r)


def retired_refusal(mode: Mode) -> str:
    return (
        f"mode {mode.value} reads the old index, which `migrate finish` retired: it is no "
        "longer written and not served. Search in mode new (the default); only a request with "
        "the admin key may still read the retired index"
    )


def query_problem(sv: Services, query: str) -> str | None:
    """Why a query text is refused (422), or None."""
    if not query.strip():
        return "query is blank"
    if len(query) > sv.settings.server.max_query_chars:
        return f"query longer than {sv.settings.server.max_query_chars} characters"
    return None


@router.post(
    "/search",
    response_model=SearchResponse,
    responses={400: {}, 403: {}, 409: {}, 413: {}, 422: {}, 503: {}},
)
@access(Access.READ)
async def search(sv: Svc, req: SearchRequest, request: Request) -> Any:
    problem = query_problem(sv, req.query)
    if problem:
        raise Invalid(problem, problems=[{"field": "body.query"}])
    fields = ("text", "metadata") if req.with_text else ("metadata",)
    out = await serve_search(
        sv, request, req.query, req.k, req.filter, fields, req.mode, req.force, req.reembed
    )
    warnings = await sv.searcher.filter_warnings(req.filter, out.lists)
    res = out.result
    payloads = res.payloads
    body: dict[str, Any] = {
        "mode": out.mode.value,
        "coverage": round(res.coverage, 4),
        "took_ms": round(out.took * 1000, 2),
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
    if out.degraded:
        body["degraded"] = out.degraded
    if warnings:
        body["warnings"] = warnings
    # Built by hand and serialised by orjson: the shape is SearchResponse (documented
    # above), without FastAPI validating it a second time on the hot path.
    return OrjsonResponse(body, headers=out.headers())
