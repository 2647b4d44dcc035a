"""Chroma's HTTP API (v2) for reads, queries and record writes: an app written against
chromadb points `chromadb.HttpClient(host, port)` at the proxy and keeps working through the
migration. One collection is served, the app's own (`chroma_api.collection`); its records are
crossfade's documents (id, document = text, metadata), read from the app's own index, written
to every live index (dual write), queried through crossfade's vector paths (the app sends
query embeddings of its own model). Answers in Chroma's shapes with crossfade's migration
headers; errors as Chroma's (chromadb raises its usual exceptions). The translation is in
proxy/chroma_api.

Served: heartbeat, version, pre-flight-checks, auth/identity, the tenant and database (those
configured, nothing created), the collection (list, count, get by name, get_or_create of it),
and its records: count, get, query, add, upsert, update, delete. Creating, modifying or
deleting collections is refused: crossfade migrates the one collection the app has."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Query, Request, Response
from starlette.exceptions import HTTPException

from proxy.api.documents import erase_documents, ids_matching, write_app_vectors, write_documents
from proxy.api.errors import OrjsonResponse, ShapedRoute
from proxy.api.search import Served, read_store, serve_vector, status_headers, vector_side
from proxy.api.services import Services, Svc, access
from proxy.chroma_api import ChromaRefusal
from proxy.chroma_api.answers import (
    ChromaError,
    GetResponse,
    QueryResponse,
    columns,
    distances,
    failed,
    get_result,
    query_result,
    refused,
)
from proxy.chroma_api.bodies import (
    DeleteBody,
    GetBody,
    QueryBody,
    RecordsBody,
    parse,
    refuse_uris,
    refuse_where_document,
    vectors,
)
from proxy.chroma_api.collection import ServedCollection
from proxy.chroma_api.records import Op, Stored, check_batch, plan
from proxy.chroma_api.where import to_filter
from proxy.errors import Conflict, CrossfadeError
from proxy.migration.finish import retired
from proxy.security import Access
from proxy.store import IndexUnavailable, VectorStore

FIELDS = ("text", "metadata")
API_VERSION = "1.0.0"  # what `chroma run` of chromadb 1.x answers to /version


class ChromaRoute(ShapedRoute):
    """Errors of these routes in Chroma's shape (chromadb raises its own exception on each):
    every error of proxy.errors with its status (and Retry-After), body parsing errors too,
    in the Chroma server's words."""

    def malformed(self, errors: list[Any], t0: float) -> Response:
        if any(x.get("type") == "json_invalid" for x in errors):
            return failed(400, "Failed to parse the request body as JSON")
        first = errors[0] if errors else {"msg": "invalid", "loc": ()}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"Failed to deserialize the JSON body into the target type: {where}"
        return failed(422, f"{message}: {first['msg']}")

    def http_error(self, e: HTTPException, t0: float) -> Response:
        return failed(e.status_code, str(e.detail))

    def refused(self, e: CrossfadeError, t0: float) -> Response:
        return refused(e)


router = APIRouter(route_class=ChromaRoute, prefix="/api/v2", tags=["chroma"])
ChromaBody = Body(description="As chromadb's HTTP client sends it (Chroma's API v2).")
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ChromaError, "description": "Bad request (Chroma's InvalidArgumentError)"},
    404: {"model": ChromaError, "description": "No such tenant, database or collection"},
    413: {"description": "Request body too large"},
    422: {"model": ChromaError, "description": "A body that does not parse"},
    503: {"model": ChromaError, "description": "An index the answer needs is unreachable"},
}
WRITE_ERRORS = {
    **ERRORS,
    409: {"model": ChromaError, "description": "A vector that is not the app's model's"},
}
DB = "/tenants/{tenant}/databases/{database}"
COLLECTION = DB + "/collections/{collection_id}"


def served(sv: Services) -> ServedCollection:
    """The app's collection as its model's side has it; after a finish, the new one's (its
    vectors are the ones left to query)."""
    side = "new" if sv.retired.get() else sv.settings.vector_clients.app_model
    try:
        function = sv.rt.store(side).persisted_embedding_function()
    except IndexUnavailable:  # (described without it; queries will say what is down)
        function = None
    return ServedCollection.of(sv.settings, sv.rt.model(side).fingerprint.dim, function)


def checked(sv: Services, tenant: str, database: str, collection_id: str) -> ServedCollection:
    c = served(sv)
    c.check_id(tenant, database, collection_id)
    return c


def answer(body: Any, sv: Services, status: int = 200) -> OrjsonResponse:
    """A Chroma answer with crossfade's migration headers."""
    return OrjsonResponse(body, status_code=status, headers=status_headers(sv))


def vector_store(sv: Services, side: str) -> VectorStore | None:
    """The index holding `side`'s model's vectors, while it is read (not the retired old one)."""
    if side == "old" and retired(sv.rt):
        return None
    return sv.rt.store(side)


# --- the server, tenant, database, collection -----------------------------------------------


@router.get("/heartbeat")
@access(Access.OPEN)  # as on Chroma: clients check it before anything else
async def heartbeat() -> Any:
    return {"nanosecond heartbeat": time.time_ns()}


@router.get("/version")
@access(Access.OPEN)
async def version() -> Any:
    return API_VERSION


@router.get("/pre-flight-checks")
@access(Access.OPEN)
async def pre_flight_checks(sv: Svc) -> Any:
    """What chromadb asks before its first write: the batch bound (it splits larger batches
    itself) and whether embeddings may come as base64 float32 (they may)."""
    return {"max_batch_size": sv.settings.chroma_api.max_batch_size,
            "supports_base64_encoding": True}  # fmt: skip


@router.get("/auth/identity", responses=ERRORS)
@access(Access.READ)
async def identity(sv: Svc) -> Any:
    c = served(sv)
    return {"user_id": "", "tenant": c.tenant, "databases": [c.database]}


@router.get("/tenants/{tenant}", responses=ERRORS)
@access(Access.READ)
async def get_tenant(sv: Svc, tenant: str) -> Any:
    served(sv).check_tenant(tenant)
    return {"name": tenant, "resource_name": None}


@router.get("/tenants/{tenant}/databases", responses=ERRORS)
@access(Access.READ)
async def list_databases(sv: Svc, tenant: str) -> Any:
    c = served(sv)
    c.check_tenant(tenant)
    return [c.database_json()]


@router.get(DB, responses=ERRORS)
@access(Access.READ)
async def get_database(sv: Svc, tenant: str, database: str) -> Any:
    c = served(sv)
    c.check_database(tenant, database)
    return c.database_json()


@router.get(DB + "/collections", responses=ERRORS)
@access(Access.READ)
async def list_collections(
    sv: Svc,
    tenant: str,
    database: str,
    limit: Annotated[int | None, Query(ge=0)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Any:
    c = served(sv)
    c.check_database(tenant, database)
    return answer([c.as_json()][offset : None if limit is None else offset + limit], sv)


@router.get(DB + "/collections_count", responses=ERRORS)
@access(Access.READ)
async def count_collections(sv: Svc, tenant: str, database: str) -> Any:
    served(sv).check_database(tenant, database)
    return 1


@router.post(DB + "/collections", responses=ERRORS | {409: {"model": ChromaError}})
@access(Access.READ)  # changes nothing: answers the served collection, or refuses
async def create_collection(
    sv: Svc, tenant: str, database: str, raw: dict[str, Any] = ChromaBody
) -> Any:
    """`get_or_create_collection` of the served collection answers it (whatever configuration
    is sent: the collection keeps its own); creating any collection is refused."""
    c = served(sv)
    c.check_database(tenant, database)
    name = raw.get("name")
    if name != c.name:
        raise ChromaRefusal(
            f"crossfade serves one collection, {c.name!r} (the one migrating): it can't "
            f"create {name!r}"
        )
    if raw.get("get_or_create") is not True:
        raise Conflict(f"Collection [{name}] already exists")
    return answer(c.as_json(), sv)


@router.get(DB + "/collections/{collection_name}", responses=ERRORS)
@access(Access.READ)
async def get_collection(sv: Svc, tenant: str, database: str, collection_name: str) -> Any:
    c = served(sv)
    c.check_name(tenant, database, collection_name)
    return answer(c.as_json(), sv)


@router.put(COLLECTION, responses=ERRORS)
@access(Access.WRITE)
async def modify_collection(sv: Svc, tenant: str, database: str, collection_id: str) -> Any:
    checked(sv, tenant, database, collection_id)
    raise ChromaRefusal(
        "crossfade migrates this collection: its name, metadata and configuration can't be "
        "changed through the proxy during a migration"
    )


@router.delete(DB + "/collections/{collection_name}", responses=ERRORS)
@access(Access.WRITE)
async def delete_collection(sv: Svc, tenant: str, database: str, collection_name: str) -> Any:
    served(sv).check_name(tenant, database, collection_name)
    raise ChromaRefusal(
        "crossfade migrates this collection: it can't be deleted through the proxy (delete "
        "its records, or end the migration first)"
    )


# --- reads ------------------------------------------------------------------------------------


@router.get(COLLECTION + "/count", responses=ERRORS)
@access(Access.READ)
async def count(sv: Svc, tenant: str, database: str, collection_id: str) -> Any:
    checked(sv, tenant, database, collection_id)
    return answer(await asyncio.to_thread(read_store(sv).count), sv)


def collect(
    store: VectorStore, flt: Any, skip: int, want: int, fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Up to `want` records `flt` matches after the first `skip`, in the index's order
    (skipped by pages of ids alone)."""
    start = None
    while skip > 0:
        views, start = store.page(flt, min(256, skip), start, ())
        skip -= len(views)
        if start is None:
            return []
    out: list[dict[str, Any]] = []
    while len(out) < want:
        views, start = store.page(flt, min(256, want - len(out)), start, fields)
        out += views
        if start is None:
            break
    return out


@router.post(COLLECTION + "/get", responses={200: {"model": GetResponse}, **ERRORS})
@access(Access.READ)
async def get(
    sv: Svc, tenant: str, database: str, collection_id: str, raw: dict[str, Any] = ChromaBody
) -> Any:
    checked(sv, tenant, database, collection_id)
    body: GetBody = parse(GetBody, raw)
    refuse_where_document(body.where_document)
    refuse_uris(body.include)
    bound = sv.settings.chroma_api.max_get
    if body.limit is not None and body.limit > bound:
        raise ChromaRefusal(f"limit {body.limit} is over {bound} (chroma_api.max_get): page")
    flt = to_filter(body.where, body.ids)
    want = bound + 1 if body.limit is None else body.limit
    found = await asyncio.to_thread(collect, read_store(sv), flt, body.offset or 0, want, FIELDS)
    if len(found) > bound:
        raise ChromaRefusal(
            f"more than {bound} records match (chroma_api.max_get): page through them with "
            "limit and offset"
        )
    views = {v["doc_id"]: v for v in found}
    ids = [i for i in dict.fromkeys(body.ids) if i in views] if body.ids else list(views)
    vecs = None
    if "embeddings" in body.include:
        vecs = await embeddings_of(sv, sv.settings.vector_clients.app_model, ids)
    return answer(get_result(columns(ids, views, vecs, body.include), body.include), sv)


async def embeddings_of(sv: Services, side: str, ids: list[str]) -> dict[str, np.ndarray]:
    store = vector_store(sv, side)
    if store is None or not ids:
        return {}
    return await asyncio.to_thread(store.dense_vectors, ids)


@router.post(COLLECTION + "/query", responses={200: {"model": QueryResponse}, **ERRORS})
@access(Access.READ)
async def query(
    sv: Svc,
    request: Request,
    tenant: str,
    database: str,
    collection_id: str,
    raw: dict[str, Any] = ChromaBody,
) -> Any:
    """Each query embedding served as crossfade serves an app's vector (proxy/api/search.py's
    `serve_vector`: one it returned from /v1/embeddings as its text, fused; an old-model one
    through the query map or the old index alone), ranked by crossfade, with each hit's
    distance in the app's own space (proxy/chroma_api/answers.py)."""
    c = checked(sv, tenant, database, collection_id)
    body: QueryBody = parse(QueryBody, raw)
    refuse_where_document(body.where_document)
    refuse_uris(body.include)
    conf = sv.settings.chroma_api
    if body.query_embeddings is None:
        # chromadb clients never send query_texts: they embed them with the collection's
        # embedding function (crossfade's /v1/embeddings, to be served as text).
        named = "query_texts are not served" if body.query_texts else "query_embeddings: missing"
        raise ChromaRefusal(
            f"{named}: send query_embeddings, the query vectors of the collection's embedding "
            "function (chromadb clients embed query_texts themselves)"
        )
    if len(body.query_embeddings) > conf.max_queries:
        raise ChromaRefusal(
            f"{len(body.query_embeddings)} query embeddings, over {conf.max_queries} per "
            "request (chroma_api.max_queries)"
        )
    if body.n_results > conf.max_results:
        raise ChromaRefusal(f"n_results over {conf.max_results} (chroma_api.max_results)")
    queries = vectors(body.query_embeddings, "query_embeddings")
    sides = [side_of(sv, q, i) for i, q in enumerate(queries)]
    flt = to_filter(body.where, body.ids)
    asked = zip(queries, sides, strict=True)
    done = await asyncio.gather(*(one_query(sv, request, c, q, s, body, flt) for q, s in asked))
    answered = [s for _, _, s in done if s is not None]
    headers = answered[0].headers() if answered else status_headers(sv)
    if answered:  # each query's path: text, vector-adapted, vector-old, vector-new
        headers["X-Crossfade-Query"] = ",".join(dict.fromkeys(s.query for s in answered))
    out = query_result([r for r, _, _ in done], [d for _, d, _ in done], body.include)
    return OrjsonResponse(out, headers=headers)


def side_of(sv: Services, q: np.ndarray, i: int) -> str:
    side = vector_side(sv, len(q))
    if side is None:
        models = sv.settings.models
        dims = {s: sv.rt.model(s).fingerprint.dim for s in ("old", "new")}
        raise ChromaRefusal(
            f"query_embeddings[{i}]: {len(q)} dimensions, from no model of this migration "
            f"({models.old.name}: {dims['old']}, {models.new.name}: {dims['new']})"
        )
    return side


async def one_query(
    sv: Services,
    request: Request,
    c: ServedCollection,
    q: np.ndarray,
    side: str,
    body: QueryBody,
    flt: Any,
) -> tuple[dict[str, Any], list[Any], Served | None]:
    if body.n_results == 0:
        return columns([], {}, None, body.include), [], None
    got = await serve_vector(sv, request, q, side, body.n_results, flt, FIELDS)
    ids = [h.doc_id for h in got.result.hits]
    needs = "distances" in body.include or "embeddings" in body.include
    vecs = await embeddings_of(sv, side, ids) if needs else {}
    dists = distances(c.space, q, [vecs.get(i) for i in ids])
    return columns(ids, got.result.payloads, vecs, body.include), dists, got


# --- writes -----------------------------------------------------------------------------------


async def write(sv: Services, op: Op, raw: dict[str, Any]) -> None:
    """add / upsert / update: the records as documents (proxy/chroma_api/records.py), written
    to every live index; the app's embeddings, when sent, checked to be its model's first
    (409 otherwise, nothing written)."""
    body: RecordsBody = parse(RecordsBody, raw)
    check_batch(body, sv.settings.chroma_api.max_batch_size)
    views = await asyncio.to_thread(read_store(sv).retrieve, body.ids, FIELDS)
    stored = {i: Stored(v.get("text"), v.get("metadata") or {}) for i, v in views.items()}
    planned = plan(op, body, stored)
    if not planned.docs:
        return
    if planned.vectors is None:
        await write_documents(sv.rt, planned.docs)
    else:
        recall = sv.remembered.recall
        await write_app_vectors(sv.rt, planned.docs, planned.vectors, recall, planned.where)


@router.post(COLLECTION + "/add", status_code=201, responses=WRITE_ERRORS)
@access(Access.WRITE)
async def add(
    sv: Svc, tenant: str, database: str, collection_id: str, raw: dict[str, Any] = ChromaBody
) -> Any:
    checked(sv, tenant, database, collection_id)
    await write(sv, "add", raw)
    return answer({}, sv, status=201)


@router.post(COLLECTION + "/upsert", responses=WRITE_ERRORS)
@access(Access.WRITE)
async def upsert(
    sv: Svc, tenant: str, database: str, collection_id: str, raw: dict[str, Any] = ChromaBody
) -> Any:
    checked(sv, tenant, database, collection_id)
    await write(sv, "upsert", raw)
    return answer({}, sv)


@router.post(COLLECTION + "/update", responses=WRITE_ERRORS)
@access(Access.WRITE)
async def update(
    sv: Svc, tenant: str, database: str, collection_id: str, raw: dict[str, Any] = ChromaBody
) -> Any:
    checked(sv, tenant, database, collection_id)
    await write(sv, "update", raw)
    return answer({}, sv)


@router.post(COLLECTION + "/delete", responses=WRITE_ERRORS)
@access(Access.WRITE)
async def delete(
    sv: Svc, tenant: str, database: str, collection_id: str, raw: dict[str, Any] = ChromaBody
) -> Any:
    """By ids and/or where (both: the ids that match); neither deletes nothing, as in Chroma.
    A where matching more than chroma_api.max_delete is refused before anything is deleted."""
    checked(sv, tenant, database, collection_id)
    body: DeleteBody = parse(DeleteBody, raw)
    refuse_where_document(body.where_document)
    if body.ids is None and body.where is None:
        return answer({"deleted": 0}, sv)
    bound = sv.settings.chroma_api.max_delete
    if body.ids is not None and len(set(body.ids)) > bound:
        raise ChromaRefusal(f"{len(set(body.ids))} ids, over {bound} (chroma_api.max_delete)")
    ids = await ids_matching(read_store(sv), to_filter(body.where, body.ids), bound)
    if len(ids) > bound:
        raise ChromaRefusal(
            f"the where clause matches more than {bound} records (chroma_api.max_delete); "
            "nothing was deleted: narrow it and delete in parts"
        )
    if body.limit is not None:
        ids = ids[: body.limit]
    if ids:
        await erase_documents(sv.rt, ids)
    return answer({"deleted": len(ids)}, sv)
