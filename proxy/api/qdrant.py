"""Qdrant's REST API for search and document writes, taking text: an app written against
qdrant-client points `QdrantClient(url=..., cloud_inference=True)` at the proxy and keeps
working through the migration. Its collection name maps to the migration; answers carry its
own point ids and payload layout, in Qdrant's shapes, with crossfade's migration headers.
The translation is in proxy/qdrant_api; REST only (gRPC is not served)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from qdrant_client.http import models as qm
from starlette.exceptions import HTTPException

from proxy.api.documents import (
    erase_documents,
    ids_matching,
    write_app_vectors,
    write_documents,
)
from proxy.api.errors import ShapedRoute
from proxy.api.search import (
    query_problem,
    read_store,
    serve_search,
    serve_vector,
    vector_side,
)
from proxy.api.search import status_headers as headers
from proxy.api.services import Services, Svc, access
from proxy.errors import CrossfadeError, Invalid, NotFound
from proxy.qdrant_api import Unsupported
from proxy.qdrant_api.answers import (
    API_VERSION,
    ERRORS,
    WRITE_ERRORS,
    QdrantError,
    QdrantOk,
    failed,
    not_found,
    refused,
)
from proxy.qdrant_api.answers import ok as answer
from proxy.qdrant_api.filters import to_filter
from proxy.qdrant_api.layout import AppLayout
from proxy.qdrant_api.points import point_in
from proxy.qdrant_api.queries import SEND_A_DOCUMENT, Query, parse_query, refuse_vectors
from proxy.qdrant_api.queries import select_payload as select
from proxy.security import Access
from proxy.store import VectorStore

FIELDS = ("text", "metadata")
MAX_POINTS = 1024  # per upsert, retrieve or delete request


class QdrantRoute(ShapedRoute):
    """Errors of these routes in Qdrant's shape: every error of proxy.errors with its status
    (and Retry-After), body parsing errors too."""

    def malformed(self, errors: list[Any], t0: float) -> Response:
        first = errors[0] if errors else {"msg": "invalid", "loc": ()}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return failed(400, f"Format error in JSON body: {where}: {first['msg']}", t0)

    def http_error(self, e: HTTPException, t0: float) -> Response:
        return failed(e.status_code, f"Format error in JSON body: {e.detail}", t0)  # not JSON

    def refused(self, e: CrossfadeError, t0: float) -> Response:
        return refused(e, t0)


router = APIRouter(route_class=QdrantRoute, tags=["qdrant"])
# Bodies are documented as JSON objects and parsed by qdrant-client's own models (its schema
# is Qdrant's API reference): their full schema would make the OpenAPI document ten times
# larger and schema-driven fuzzing crawl; the Qdrant-aware fuzzing is in tests/test_fuzz.py.
QdrantBody = Body(description="As in Qdrant's REST API (qdrant_client.http.models).")
OptionalBody = Body(None, description="As in Qdrant's REST API (qdrant_client.http.models).")


def parse(model: Any, body: Any) -> Any:
    """`body` as the qdrant-client model; a mismatch is Qdrant's 400 'Format error'."""
    try:
        return TypeAdapter(model).validate_python(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Unsupported(f"Format error in JSON body: {where}: {first['msg']}") from None


OK = {200: {"model": QdrantOk}}
BOUNDED = {422: {"model": QdrantError, "description": "More work than one request may ask"}}


def collection_of(sv: Services) -> str:
    return sv.settings.qdrant_api.collection or sv.settings.indexes.old.collection


def check(sv: Services, name: str) -> AppLayout:
    if name != collection_of(sv):
        raise NotFound(not_found(name))
    return AppLayout.of(sv.settings)


def points(
    layout: AppLayout,
    rows: list[tuple[str, float | None]],
    payloads: dict[str, dict[str, Any]],
    with_payload: Any,
) -> list[dict[str, Any]]:
    out = []
    for doc_id, score in rows:
        p: dict[str, Any] = {"id": layout.point_id(doc_id)}
        if score is not None:
            p["version"], p["score"] = 0, score
        view = payloads.get(doc_id)
        chosen = select(layout.payload(view), with_payload) if view is not None else None
        if chosen is not None:
            p["payload"] = chosen
        out.append(p)
    return out


# --- service and collection ---------------------------------------------------------------


class VersionInfo(BaseModel):
    title: str
    version: str


@router.get("/", response_model=VersionInfo)
@access(Access.OPEN)  # as on Qdrant: its clients ask it before anything else
async def root() -> Any:
    """Qdrant's version call (qdrant-client asks it at start to check compatibility)."""
    return {"title": "crossfade (Qdrant REST API, search and document writes)",
            "version": API_VERSION}  # fmt: skip


@router.get("/collections", responses=OK)
async def collections(sv: Svc) -> Any:
    return answer({"collections": [{"name": collection_of(sv)}]}, time.perf_counter())


@router.get("/collections/{collection_name}/exists", responses=OK)
async def exists(sv: Svc, collection_name: str) -> Any:
    return answer({"exists": collection_name == collection_of(sv)}, time.perf_counter())


@router.get("/collections/{collection_name}", responses={**OK, **ERRORS})
async def collection_info(sv: Svc, collection_name: str) -> Any:
    t0 = time.perf_counter()
    check(sv, collection_name)
    store = read_store(sv)
    count = await asyncio.to_thread(store.count)
    # The app's vectors as its client checks them (LangChain's from_existing_collection: size
    # and distance): its own model's, whichever index serves them behind the proxy.
    app = sv.rt.model(sv.settings.vector_clients.app_model).fingerprint
    old = sv.settings.indexes.old
    dense = {"size": app.dim, "distance": "Cosine"}
    result = {
        "status": "green",
        "optimizer_status": "ok",
        "points_count": count,
        "segments_count": 1,
        "config": {
            "params": {"vectors": dense if old.vector == "" else {old.vector: dense}},
            "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
            "optimizer_config": {"default_segment_number": 0, "flush_interval_sec": 5},
        },
        "payload_schema": {},
    }
    return answer(result, t0, headers(sv))


# --- queries --------------------------------------------------------------------------------


async def run_query(
    sv: Services, request: Request, layout: AppLayout, q: Query
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    k = q.limit + q.offset
    if q.text is not None:
        problem = query_problem(sv, q.text)
        if problem:
            raise Unsupported(problem)
        served = await serve_search(sv, request, q.text, k, q.filter, FIELDS)
        rows = [(h.doc_id, h.score) for h in served.result.hits]
        payloads, hdrs = served.result.payloads, served.headers()
    else:
        assert q.raw is not None
        vec = np.asarray(q.raw.vector, dtype=np.float32)
        if sv.settings.qdrant_api.raw_vectors == "serve":
            side = vector_model(sv, len(vec), q.raw.using)
            served = await serve_vector(sv, request, vec, side, k, q.filter, FIELDS)
            rows = [(h.doc_id, h.score) for h in served.result.hits]
            payloads, hdrs = served.result.payloads, served.headers()
        else:  # pass: the index the vector fits, unfused
            side, store = raw_vector_index(sv, q.raw.vector, q.raw.using)
            found = await asyncio.to_thread(store.query_dense, vec, k, q.filter, FIELDS)
            rows = [(p["doc_id"], s) for p, s in found]
            payloads = {p["doc_id"]: p for p, _ in found}
            hdrs = {**headers(sv), "X-Crossfade-Raw-Vector": side, "X-Crossfade-Query": "raw"}
    rows = rows[q.offset :]
    if q.score_threshold is not None:
        rows = [(d, s) for d, s in rows if s >= q.score_threshold]
    return points(layout, rows, payloads, q.with_payload), hdrs


def vector_model(sv: Services, dim: int, using: str | None) -> str:
    """Which model of the migration an app's query vector comes from: the app's own
    (`vector_clients.app_model`, the old one until the app moves) when the dimension fits it,
    else the other one's if that fits; under the collection's vector name."""
    names = {sv.settings.indexes.old.vector, sv.rt.store("new").vector}
    if (using or "") not in names:
        raise Unsupported(
            f"vector name {using or ''!r}: this collection's is {sv.settings.indexes.old.vector!r}"
        )
    side = vector_side(sv, dim)
    if side is not None:
        return side
    dims = {side: sv.rt.model(side).fingerprint.dim for side in ("old", "new")}
    models = sv.settings.models
    raise Unsupported(
        f"a query vector of {dim} dimensions is from no model of this migration "
        f"({models.old.name}: {dims['old']}, {models.new.name}: {dims['new']}); {SEND_A_DOCUMENT}"
    )


def raw_vector_index(
    sv: Services, vector: list[float], using: str | None
) -> tuple[str, VectorStore]:
    """The index a raw vector is searched in (qdrant_api.raw_vectors: pass): the one whose
    vector name and dimension it fits; the old one (the app's own model) if both do. A
    vector that fits neither is refused: it is never searched in another model's space."""
    if sv.settings.qdrant_api.raw_vectors == "refuse":
        raise Unsupported(f"a raw vector can't be migrated (there is no text): {SEND_A_DOCUMENT}")
    from proxy.migration.finish import retired

    sides = ["new"] if retired(sv.rt) else ["old", "new"]
    seen = []
    for side in sides:
        store = sv.rt.store(side)
        info = store.info()
        if info is None:
            continue
        seen.append(f"{side} index: vector {store.vector!r}, {info.dim} dimensions")
        if (using or "") == store.vector and len(vector) == info.dim:
            return side, store
    raise Unsupported(
        f"a vector of {len(vector)} dimensions for vector name {using or ''!r} fits no index "
        f"({'; '.join(seen) or 'none exists'}); {SEND_A_DOCUMENT}"
    )


async def queries(
    sv: Services, request: Request, name: str, searches: list[qm.QueryRequest], batch: bool
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each search's answer (`{"points": [...]}`) and the headers of the first. A batch is
    bounded in searches and in the results they ask for together (422 past either)."""
    layout = check(sv, name)
    conf = sv.settings.qdrant_api
    if len(searches) > conf.max_batch_searches:
        raise Invalid(
            f"a batch holds at most {conf.max_batch_searches} searches "
            f"(qdrant_api.max_batch_searches), not {len(searches)}: split it",
        )
    qs = [parse_query(s, layout, conf.max_limit) for s in searches]
    asked = sum(q.limit + q.offset for q in qs)
    if batch and asked > conf.max_batch_limit:
        raise Invalid(
            f"the batch asks for {asked} results (offset + limit summed over its searches), "
            f"over {conf.max_batch_limit} (qdrant_api.max_batch_limit): ask for fewer or "
            "smaller searches",
        )
    done = await asyncio.gather(*(run_query(sv, request, layout, q) for q in qs))
    return [{"points": found} for found, _ in done], done[0][1] if done else headers(sv)


@router.post("/collections/{collection_name}/points/query", responses={**OK, **ERRORS})
@access(Access.READ)
async def query_points(
    sv: Svc, request: Request, collection_name: str, raw: dict[str, Any] = QdrantBody
) -> Any:
    t0 = time.perf_counter()
    check(sv, collection_name)  # an unknown collection is a 404 before the body's 400
    req = parse(qm.QueryRequest, raw)
    (found,), hdrs = await queries(sv, request, collection_name, [req], batch=False)
    return answer(found, t0, hdrs)


@router.post(
    "/collections/{collection_name}/points/query/batch", responses={**OK, **ERRORS, **BOUNDED}
)
@access(Access.READ)
async def query_batch(
    sv: Svc, request: Request, collection_name: str, raw: dict[str, Any] = QdrantBody
) -> Any:
    t0 = time.perf_counter()
    check(sv, collection_name)
    searches = parse(qm.QueryRequestBatch, raw).searches
    found, hdrs = await queries(sv, request, collection_name, searches, batch=True)
    return answer(found, t0, hdrs)


# --- reads by filter and id ----------------------------------------------------------------


@router.post("/collections/{collection_name}/points/scroll", responses={**OK, **ERRORS})
@access(Access.READ)
async def scroll(sv: Svc, collection_name: str, raw: dict[str, Any] | None = OptionalBody) -> Any:
    t0 = time.perf_counter()
    layout = check(sv, collection_name)
    body = parse(qm.ScrollRequest, raw or {})
    if body.order_by is not None:
        raise Unsupported("'order_by' is not supported")
    if body.shard_key is not None:
        raise Unsupported("'shard_key' is not supported")
    refuse_vectors(body.with_vector)
    limit = 10 if body.limit is None else body.limit
    if not 1 <= limit <= sv.settings.qdrant_api.max_limit:
        raise Unsupported(f"'limit' must be 1 to {sv.settings.qdrant_api.max_limit}")
    start = layout.doc_id(body.offset) if body.offset is not None else None
    flt = to_filter(body.filter, layout)
    views, nxt = await asyncio.to_thread(read_store(sv).page, flt, limit, start, FIELDS)
    with_payload = True if body.with_payload is None else body.with_payload
    found = points(layout, [(v["doc_id"], None) for v in views],
                   {v["doc_id"]: v for v in views}, with_payload)  # fmt: skip
    result = {"points": found, "next_page_offset": layout.point_id(nxt) if nxt else None}
    return answer(result, t0, headers(sv))


@router.post("/collections/{collection_name}/points/count", responses={**OK, **ERRORS})
@access(Access.READ)
async def count(sv: Svc, collection_name: str, raw: dict[str, Any] | None = OptionalBody) -> Any:
    t0 = time.perf_counter()
    layout = check(sv, collection_name)
    body = parse(qm.CountRequest, raw or {})
    if body.shard_key is not None:
        raise Unsupported("'shard_key' is not supported")
    flt = to_filter(body.filter, layout)
    n = await asyncio.to_thread(read_store(sv).count_matching, flt)
    return answer({"count": n}, t0, headers(sv))


@router.post("/collections/{collection_name}/points", responses={**OK, **ERRORS})
@access(Access.READ)  # retrieve by ids
async def retrieve(sv: Svc, collection_name: str, raw: dict[str, Any] = QdrantBody) -> Any:
    t0 = time.perf_counter()
    layout = check(sv, collection_name)
    body = parse(qm.PointRequest, raw)
    if body.shard_key is not None:
        raise Unsupported("'shard_key' is not supported")
    refuse_vectors(body.with_vector)
    if len(body.ids) > MAX_POINTS:
        raise Unsupported(f"at most {MAX_POINTS} ids per request")
    ids = list(dict.fromkeys(layout.doc_id(i) for i in body.ids))
    views = await asyncio.to_thread(read_store(sv).retrieve, ids, FIELDS)
    with_payload = True if body.with_payload is None else body.with_payload
    found = points(layout, [(d, None) for d in ids if d in views], views, with_payload)
    return answer(found, t0, headers(sv))


# --- writes ---------------------------------------------------------------------------------


@router.put("/collections/{collection_name}/points", responses={**OK, **WRITE_ERRORS})
async def upsert(sv: Svc, collection_name: str, raw: dict[str, Any] = QdrantBody) -> Any:
    t0 = time.perf_counter()
    layout = check(sv, collection_name)
    op = parse(qm.PointInsertOperations, raw)
    if op.shard_key is not None or op.update_filter is not None or op.update_mode is not None:
        raise Unsupported("'shard_key', 'update_filter' and 'update_mode' are not supported")
    if isinstance(op, qm.PointsList):
        items = [(p.id, p.vector, p.payload) for p in op.points]
    else:
        b = op.batch
        vectors = b.vectors if isinstance(b.vectors, list) else None
        if vectors is None:
            raise Unsupported("batch vectors must be a list (of vectors or Documents)")
        payloads = b.payloads or [None] * len(b.ids)
        if not len(b.ids) == len(vectors) == len(payloads):
            raise Unsupported("batch ids, vectors and payloads differ in length")
        items = list(zip(b.ids, vectors, payloads, strict=True))
    if not 1 <= len(items) <= MAX_POINTS:
        raise Unsupported(f"1 to {MAX_POINTS} points per request")
    name = sv.settings.indexes.old.vector
    where = [f"points[{i}]" for i in range(len(items))]
    given = [
        point_in(vec, payload, layout, name, w)
        for (_, vec, payload), w in zip(items, where, strict=True)
    ]
    docs = [
        layout.document(pid, g.text, payload, w)
        for (pid, _, payload), g, w in zip(items, given, where, strict=True)
    ]
    if all(g.vector is None for g in given):
        await write_documents(sv.rt, docs)
    elif any(g.vector is None for g in given):
        raise Unsupported("send either Documents or vectors in one request, not both")
    else:
        vecs = [g.vector for g in given if g.vector is not None]
        await write_app_vectors(sv.rt, docs, vecs, sv.remembered.recall, where)
    return answer({"operation_id": 0, "status": "completed"}, t0, headers(sv))


@router.post(
    "/collections/{collection_name}/points/delete", responses={**OK, **WRITE_ERRORS, **BOUNDED}
)
async def delete(sv: Svc, collection_name: str, raw: dict[str, Any] = QdrantBody) -> Any:
    t0 = time.perf_counter()
    layout = check(sv, collection_name)
    body = parse(qm.PointsSelector, raw)
    if body.shard_key is not None:
        raise Unsupported("'shard_key' is not supported")
    bound = sv.settings.qdrant_api.max_delete_points
    if isinstance(body, qm.PointIdsList):
        ids = list(dict.fromkeys(layout.doc_id(i) for i in body.points))
        if len(ids) > bound:
            raise Invalid(f"{len(ids)} ids, over {bound} per delete (qdrant_api.max_delete_points)")
    else:  # every point the filter matches, in pages, up to one past the bound
        ids = await ids_matching(read_store(sv), to_filter(body.filter, layout), bound)
        if len(ids) > bound:
            raise Invalid(
                f"the filter matches more than {bound} points (qdrant_api.max_delete_points); "
                "nothing was deleted: narrow the filter and delete in parts",
            )
    if ids:
        await erase_documents(sv.rt, list(dict.fromkeys(ids)))
    return answer({"operation_id": 0, "status": "completed"}, t0, headers(sv))
