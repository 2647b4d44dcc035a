"""Chroma adapter through the official `chromadb` client: a Chroma server (`url:
http://HOST:PORT`, e.g. the Rust server `chroma run` starts) or an embedded Chroma (`url:
local:PATH`, a PersistentClient), in `tenant`/`database` when set.

A point is a Chroma record keyed by crossfade's doc id itself (Chroma ids are strings):
- the text is the record's document;
- the embedding is the dense vector. Chroma keeps one embedding per record and needs one for
  every record, so a point without a dense vector (seeded, not migrated yet) holds a
  placeholder: a unit vector drawn from its doc id. Every dense query and read filters on
  `crossfade:dense`, so a placeholder is never a hit, nor read as a vector;
- the metadata (Chroma's is flat: scalars, and arrays of one scalar type) holds `doc_id`,
  `text_sha256`, the bookkeeping of a real vector (`model_fingerprint`, `vector_sha256`,
  `embedded_at`), `crossfade:dense` (bool), and crossfade's `metadata` dict twice: JSON-encoded
  whole under `crossfade:metadata` (what reads return, exactly as written: nesting, nulls,
  arrays of objects), and flattened, each scalar leaf and each array of one scalar type under
  its dotted path (`metadata.topic`, `metadata.a.b`): what filters address. Chroma has no
  "exists" operator, so `crossfade:paths` lists the payload paths that hold a non-empty value
  (for `IsEmpty` and `has_payload_field`).

Filters keep Qdrant's meaning on scalars and arrays of scalars: a match is "equals, or an
array holding it"; `except` needs the key present (an array matches when it holds none of the
values, where Qdrant asks for one other value); a range ignores non-numeric values and arrays.
A condition inside an array of objects (`a[].b`) is refused (400): flattened metadata can't
say which element a value came from.

Chroma's upsert merges a record's metadata into what it had: a write nulls every key the
record held that the new metadata lacks (read first). Every write takes the store's lock (one
per collection in this process), and a conditional re-embed (`if_text_sha256`) is a
read-check-write under it: safe against writes of this process; writers in other processes
can race it (a fleet-safe guard, e.g. the conditional commit of newer Chroma servers, is a
later issue).

The binding (IndexInfo) lives in the collection's metadata (`crossfade`, JSON), so every
replica reads the same one; the collection is created with cosine space and no embedding
function (crossfade embeds).

BM25: Chroma's open-source server has no sparse vectors and no BM25 ranking, so an index that
asks for BM25 (the new one) keeps it in a sidecar: an embedded qdrant-edge shard under
`data_dir` (`chroma-bm25/TENANT/DATABASE/COLLECTION`, given by the factory), an EdgeStore
holding, per record, the doc id, `text_sha256`, crossfade's metadata (what filters address)
and the BM25 sparse vector with the engine's IDF modifier: no text, no dense vector. It is
written by this store's own `upsert` and `delete`, after the Chroma write and under the same
lock, so every path that writes the collection (ingest, the seeding of `migrate start`, dual
writes and their journal replay, re-embeds) writes it too; a re-embed (same text) leaves it
alone. The binding says `sparse: true` only where a sidecar directory was given, and the
sidecar is created with the collection; `sparse` (the capability) is True while it is open.
A collection whose binding says BM25 but whose sidecar is missing (another data_dir) or held
by another process serves without the BM25 list and refuses writes, naming the path.

Divergence: a crash (or a sidecar write failing) between the Chroma write and the sidecar
write leaves the sidecar one batch behind. The write journal replays the whole batch, and both
writes are idempotent (an upsert of the same record, a delete of a missing id), so a replay
brings them back in step; a write that failed with an error is retried the same way. A sweep
finds any divergence by comparing the two id sets with their `text_sha256` (`scroll` of the
collection against the sidecar's): an id on one side only, or a different hash, is one to
rewrite (`bm25_divergence`). The sidecar belongs to one process, like any edge shard: a fleet
of crossfade processes in front of one Chroma server keeps BM25 in one of them only (not
supported yet). Filters on a BM25 search are evaluated by the sidecar itself (Qdrant's
semantics on the same metadata: prefiltered, exact at any selectivity, no round trip to
Chroma); they are first mapped to Chroma's `where`, so a filter Chroma refuses is refused for
both lists. One difference remains: `except` on an array matches in the sidecar when the array
holds another value (Qdrant), in Chroma when it holds none of the values.

Chroma counts without a filter only: a count of dense points or of a filter pages through
ids (O(n)). `page` resumes at a doc id by offset: the one it returned the page before, else
found by paging through ids.

The layout above is crossfade's own; the members under "the record layout" in ChromaStore
(filter keys, the dense marker, views, records, binding) are what a collection in an app's
layout changes: proxy/store/chroma_adopted.py.

Transport faults (refused, timed out, a 5xx answer) are raised as IndexUnavailable. The
client is made at first contact (its constructor talks to the server), one per (url, tenant,
database) in a process; chromadb's HTTP client has no timeout of its own, so `timeout_s` is
set on its session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import chromadb
import httpx
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import ChromaError, NotFoundError

from proxy.config import IndexConfig
from proxy.errors import BadRequest
from proxy.filters import Condition, Filter, FilterTree, HasId, IsEmpty
from proxy.store import (
    BOOKKEEPING,
    FirstContact,
    IndexInfo,
    IndexUnavailable,
    PointWrite,
    Sparse,
    VectorStore,
    check_fingerprints,
    fingerprint_counts,
    public_url,
    write_json_atomic,
)
from proxy.store.edge import META_FILE, EdgeStore

log = logging.getLogger("crossfade.store")

BINDING = "crossfade"  # collection metadata: the IndexInfo, JSON
DENSE = "crossfade:dense"  # record metadata: whether the embedding is a real vector
PATHS = "crossfade:paths"  # record metadata: payload paths that hold a non-empty value
METADATA = "crossfade:metadata"  # record metadata: crossfade's metadata dict, JSON
COSINE = {"hnsw": {"space": "cosine"}}
_PAGE = 10_000  # ids per request when counting or seeking through a collection
_CURSORS = 1024  # page starts remembered (doc id -> offset)

Where = dict[str, Any]
Selection = dict[str, Any]  # a read's `where` (and `ids`): keyword arguments of get/query
# A filter that matches nothing (every record has a doc id, none the empty one).
NOTHING: Where = {"doc_id": {"$eq": ""}}


class UnsupportedFilter(BadRequest, ValueError):
    """A filter Chroma's flat metadata can't evaluate."""


class _ServerFault(Exception):
    """A 5xx answer, raised before chromadb reads the body (which a proxy may not fill)."""

    def __init__(self, status: int, phrase: str) -> None:
        self.status, self.phrase = status, phrase
        super().__init__(f"HTTP {status} {phrase}")


# --- filters ------------------------------------------------------------------------------


def _join(op: str, parts: Iterable[Where | bool]) -> Where | bool:
    """`$and` (`$or`) of `parts`, where True and False stand for "everything" and "nothing"
    (Chroma has neither, and wants two or more operands)."""
    unit = op == "$and"  # what leaves the result as it is; its negation decides it
    ps = list(parts)
    if any(p is (not unit) for p in ps):
        return not unit
    ws = [p for p in ps if p is not unit]
    if not ws:
        return unit
    return ws[0] if len(ws) == 1 else {op: ws}


def _all(parts: Iterable[Where | bool]) -> Where | bool:
    return _join("$and", parts)


def _any(parts: Iterable[Where | bool]) -> Where | bool:
    return _join("$or", parts)


def chroma_path(field: str) -> str:
    """A payload path of crossfade's layout as a metadata key: `metadata.tags[]` addresses
    the elements of an array, which a flattened array is matched on anyway."""
    path = field.removesuffix("[]")
    if "[]" in path:
        raise UnsupportedFilter(
            f"filter key {field!r}: Chroma's flat metadata can't filter inside arrays of objects"
        )
    return path


def _by_type(values: Sequence[Any]) -> list[list[Any]]:
    """Chroma's $in/$nin take values of one type (bool apart from int)."""
    groups: dict[type, list[Any]] = {}
    for v in values:
        groups.setdefault(type(v), []).append(v)
    return list(groups.values())


def _present(path: str, yes: bool = True) -> Where:
    return {PATHS: {"$contains" if yes else "$not_contains": path}}


class Keys:
    """How crossfade's payload paths address a collection's metadata, in crossfade's own
    layout: `metadata.topic` is the key `metadata.topic`, `crossfade:paths` says which paths a
    record holds, `doc_id` holds its id. An adopted collection's are in chroma_adopted.py."""

    def key(self, field: str) -> str:
        return chroma_path(field)

    def present(self, key: str, yes: bool = True) -> Where:
        return _present(key, yes)

    def has_id(self, doc_ids: Sequence[str], neg: bool) -> Where:
        return {"doc_id": {"$nin" if neg else "$in": list(doc_ids)}}

    # Whether `has_id` can be said in a `where` (a key holds the id); where it can't, the ids
    # a filter requires at its top level go in the request's `ids` (Chroma's where has no id).
    ids_in_where = True


OWN = Keys()


def _condition(c: Condition, neg: bool, keys: Keys) -> Where | bool:
    key = keys.key(c.field)
    if c.range is not None:
        r = c.range
        bounds = [("$gt", r.gt), ("$gte", r.gte), ("$lt", r.lt), ("$lte", r.lte)]
        if not neg:
            return _all({key: {op: v}} for op, v in bounds if v is not None)
        flip = {"$gt": "$lte", "$gte": "$lt", "$lt": "$gte", "$lte": "$gt"}
        outside = [{key: {flip[op]: v}} for op, v in bounds if v is not None]
        return _any([keys.present(key, False), *outside])
    m = c.match
    assert m is not None
    if m.except_ is not None:
        vals, except_ = list(m.except_), True
    else:
        vals, except_ = ([m.value] if m.any is None else list(m.any)), False
    # equal to one of `vals`, or an array holding one
    holds = [
        *({key: {"$in": g}} for g in _by_type(vals)),
        *({key: {"$contains": v}} for v in vals),
    ]
    lacks = [
        *({key: {"$nin": g}} for g in _by_type(vals)),
        *({key: {"$not_contains": v}} for v in vals),
    ]
    if except_:
        return (
            _any([keys.present(key, False), *holds]) if neg else _all([keys.present(key), *lacks])
        )
    return _all(lacks) if neg else _any(holds)


def _clause(c: Any, neg: bool, keys: Keys) -> Where | bool:
    if isinstance(c, Condition):
        return _condition(c, neg, keys)
    if isinstance(c, IsEmpty):
        return keys.present(keys.key(c.field), neg)
    if isinstance(c, HasId):
        if not c.doc_ids:
            return neg
        return keys.has_id(c.doc_ids, neg)
    return _tree(c, neg, keys)


def _tree(t: Filter | FilterTree, neg: bool, keys: Keys) -> Where | bool:
    """must: all; should: at least one (when given); must_not: none. Negated by De Morgan
    (Chroma has no $not)."""
    if not neg:
        return _all(
            [
                *(_clause(c, False, keys) for c in t.must),
                _any(_clause(c, False, keys) for c in t.should) if t.should else True,
                *(_clause(c, True, keys) for c in t.must_not),
            ]
        )
    return _any(
        [
            *(_clause(c, True, keys) for c in t.must),
            _all(_clause(c, True, keys) for c in t.should) if t.should else False,
            *(_clause(c, False, keys) for c in t.must_not),
        ]
    )


def to_chroma_where(
    flt: Filter | FilterTree | None, *extra: Where, keys: Keys = OWN
) -> Where | None:
    """Chroma's `where` for crossfade's filter (and `extra` conditions): None = everything."""
    w = _all([_tree(flt, False, keys) if flt is not None else True, *extra])
    if w is True:
        return None
    return NOTHING if w is False else w


# --- records ------------------------------------------------------------------------------

_SCALARS = (str, int, float, bool)


def flatten(metadata: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Crossfade's metadata as flat Chroma metadata (scalar leaves and arrays of one scalar
    type under their dotted paths) and the paths that hold a non-empty value."""
    flat: dict[str, Any] = {}
    paths = ["metadata"]

    def walk(path: str, v: Any) -> None:
        if v is None or v == []:
            return
        paths.append(path)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}.{k}", x)
        elif isinstance(v, _SCALARS):
            flat[path] = v
        elif isinstance(v, list) and len({type(x) for x in v}) == 1 and isinstance(v[0], _SCALARS):
            flat[path] = list(v)

    for k, v in metadata.items():
        walk(f"metadata.{k}", v)
    return flat, paths


def record_metadata(p: PointWrite) -> dict[str, Any]:
    flat, paths = flatten(p.metadata)
    meta: dict[str, Any] = {
        "doc_id": p.doc_id,
        "text_sha256": p.text_sha256,
        DENSE: p.dense is not None,
        METADATA: json.dumps(p.metadata),
        **flat,
    }
    if p.dense is not None:
        meta.update({k: v for k, v in p.bookkeeping().items() if v is not None})
    top = [k for k in ("doc_id", "text", "text_sha256", *BOOKKEEPING) if k in meta or k == "text"]
    meta[PATHS] = [*top, *paths]
    return meta


def placeholder(doc_id: str, dim: int) -> np.ndarray:
    """The embedding of a point without a dense vector (Chroma needs one): a unit vector
    drawn from the doc id, so placeholders spread like vectors do (no pile of duplicates in
    the HNSW graph)."""
    seed = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)  # type: ignore[no-any-return]


def _include(fields: Sequence[str] | None) -> list[str]:
    if fields is None:
        return ["documents", "metadatas"]
    out = ["documents"] if "text" in fields else []
    if set(fields) - {"text", "doc_id"}:
        out.append("metadatas")
    return out


def view(
    doc_id: str, text: str | None, meta: dict[str, Any] | None, fields: Sequence[str] | None
) -> dict[str, Any]:
    """A record as crossfade's payload view: doc_id and the `fields` it holds (None: all)."""
    out: dict[str, Any] = {"doc_id": doc_id}
    if (fields is None or "text" in fields) and text is not None:
        out["text"] = text
    meta = meta or {}
    if (fields is None or "metadata" in fields) and METADATA in meta:
        out["metadata"] = json.loads(meta[METADATA])
    for k in ("text_sha256", *BOOKKEEPING):
        if (fields is None or k in fields) and k in meta:
            out[k] = meta[k]
    return out


def _records(got: Any) -> Iterator[tuple[str, str | None, dict[str, Any] | None]]:
    """(id, document, metadata) of each record of a `get` or one query's answer."""
    n = len(got["ids"])
    docs = got.get("documents") or [None] * n
    metas = got.get("metadatas") or [None] * n
    return zip(got["ids"], docs, metas, strict=True)


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- clients ------------------------------------------------------------------------------

ClientKey = tuple[str, str | None, str | None]
_clients: dict[ClientKey, tuple[ClientAPI, int]] = {}
_clients_lock = threading.Lock()
_write_locks: dict[tuple[ClientKey, str], threading.Lock] = {}


def _raise_server_fault(resp: httpx.Response) -> None:
    if resp.status_code >= 500:
        raise _ServerFault(resp.status_code, resp.reason_phrase)


def _connect(cfg: IndexConfig) -> ClientAPI:
    url = cfg.url or ""
    settings = ChromaSettings(anonymized_telemetry=False)
    where: dict[str, str] = {}
    if cfg.tenant is not None:
        where["tenant"] = cfg.tenant
    if cfg.database is not None:
        where["database"] = cfg.database
    if url.startswith("local:"):
        return chromadb.PersistentClient(url.removeprefix("local:"), settings=settings, **where)
    # The constructor talks to the server with no timeout: a heartbeat with one first.
    base = url.rstrip("/")
    beat = httpx.get(f"{base}/api/v2/heartbeat", timeout=cfg.timeout_s)
    _raise_server_fault(beat)
    beat.raise_for_status()  # (not a Chroma 1.x server: a configuration error)
    u = httpx.URL(base)
    https = u.scheme == "https"
    try:
        client = chromadb.HttpClient(
            host=u.host,
            port=u.port or (443 if https else 80),
            ssl=https,
            settings=settings,
            **where,
        )
    except ValueError as e:  # "Could not connect to a Chroma server"
        raise httpx.ConnectError(str(e)) from e
    session = getattr(client._server, "_session", None)  # chromadb's FastAPI client
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(cfg.timeout_s)
        session.event_hooks["response"] = [_raise_server_fault]
    return client


def _client_key(cfg: IndexConfig) -> ClientKey:
    return (cfg.url or "", cfg.tenant, cfg.database)


def acquire_client(cfg: IndexConfig) -> ClientAPI:
    """One client per (url, tenant, database) in a process: the old and new collections of one
    Chroma share it."""
    key = _client_key(cfg)
    with _clients_lock:
        if key in _clients:
            client, refs = _clients[key]
            _clients[key] = (client, refs + 1)
            return client
    # Connected outside the lock: a server that is down delays this store only.
    fresh = _connect(cfg)
    with _clients_lock:
        client, refs = _clients.get(key, (fresh, 0))
        _clients[key] = (client, refs + 1)
    if client is not fresh:  # another store connected meanwhile
        fresh.close()  # type: ignore[attr-defined]
    return client


def release_client(cfg: IndexConfig) -> None:
    key = _client_key(cfg)
    with _clients_lock:
        client, refs = _clients[key]
        if refs > 1:
            _clients[key] = (client, refs - 1)
            return
        del _clients[key]
    client.close()  # type: ignore[attr-defined]  # the last one stops chromadb's system


def _write_lock(cfg: IndexConfig) -> threading.Lock:
    with _clients_lock:
        return _write_locks.setdefault((_client_key(cfg), cfg.collection), threading.Lock())


def _binding(metadata: dict[str, Any] | None) -> IndexInfo | None:
    raw = (metadata or {}).get(BINDING)
    return IndexInfo(**json.loads(raw)) if isinstance(raw, str) else None


# The sidecar's own configuration: BM25 only; its dense vector (1-d) is never written.
SIDECAR = IndexConfig(backend="edge", path="bm25")


class ChromaStore(FirstContact, VectorStore):
    """`bm25_dir`: where the BM25 sidecar of this collection lives (None: no BM25)."""

    remote = True  # a server (or an embedded engine behind the client's locks)

    # --- the record layout: crossfade's own (an adopted collection's: chroma_adopted.py) ---
    KEYS: Keys = OWN
    DENSE_WHERE: Where = {DENSE: True}  # records holding a real vector (not a placeholder)
    NO_DENSE_WHERE: Where = {DENSE: False}

    def _where(self, flt: Filter | FilterTree | None, *extra: Where) -> Where | None:
        return to_chroma_where(flt, *extra, keys=self.KEYS)

    def _select(self, flt: Filter | FilterTree | None, *extra: Where) -> Selection:
        """A request's `where`, and its `ids` where the layout has no id key (the ids the
        filter's top-level `must` requires; an id condition deeper is refused by the keys)."""
        required = (
            [c for c in flt.must if isinstance(c, HasId)]
            if not self.KEYS.ids_in_where and isinstance(flt, FilterTree)
            else []
        )
        if not required:
            return {"where": self._where(flt, *extra)}
        assert isinstance(flt, FilterTree)
        rest = replace(flt, must=tuple(c for c in flt.must if not isinstance(c, HasId)))
        ids = [
            i for i in dict.fromkeys(required[0].doc_ids) if all(i in c.doc_ids for c in required)
        ]
        where = self._where(rest, *extra)  # (refused here too where Chroma would refuse it)
        return {"where": where if ids else NOTHING, "ids": ids}

    def _include(self, fields: Sequence[str] | None) -> list[str]:
        return _include(fields)

    def _view(
        self,
        doc_id: str,
        text: str | None,
        meta: dict[str, Any] | None,
        fields: Sequence[str] | None,
    ) -> dict[str, Any]:
        return view(doc_id, text, meta, fields)

    def _views(self, got: Any, fields: Sequence[str] | None) -> list[dict[str, Any]]:
        return [self._view(i, d, m, fields) for i, d, m in _records(got)]

    def _binding_of(self, col: Collection) -> IndexInfo | None:
        return _binding(col.metadata)

    def _record(self, p: PointWrite, held: set[str]) -> tuple[dict[str, Any] | None, str | None]:
        """A point as a record's metadata and document; `held`: the metadata keys the record
        holds now, nulled where the new metadata lacks them (Chroma's upsert merges)."""
        meta = record_metadata(p)
        meta.update(dict.fromkeys(held - set(meta)))
        return meta, p.text

    def __init__(self, name: str, cfg: IndexConfig, bm25_dir: Path | None = None) -> None:
        self.name = name
        self.collection = cfg.collection
        self.vector = cfg.vector
        self.sparse_vector = cfg.sparse_vector
        self._cfg = cfg
        self._client: ClientAPI | None = None
        self._lock = _write_lock(cfg)
        self._col: Collection | None = None
        self._model: Collection | None = None
        self._batch: int | None = None
        self._cursors: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._cursors_lock = threading.Lock()
        self._bm25_dir = bm25_dir
        self._bm25: EdgeStore | None = None
        self._bm25_lock = threading.Lock()
        self._first_contact()

    @property
    def location(self) -> str:
        scope = "/".join(x for x in (self._cfg.tenant, self._cfg.database) if x)
        return (
            f"chroma collection {self.collection!r}{f' ({scope})' if scope else ''} at {self._url}"
        )

    @property
    def _url(self) -> str:
        return public_url(self._cfg.url or "")

    # --- the BM25 sidecar ----------------------------------------------------------------
    @property
    def sparse(self) -> bool:  # type: ignore[override]
        """BM25 while the binding asks for it and the sidecar is open (read from the cached
        binding: no request)."""
        try:
            return self._sidecar() is not None
        except RuntimeError as e:
            log.warning("%s: BM25 left out: %s", self.location, e)
            return False

    def _sidecar(self) -> EdgeStore | None:
        """The BM25 sidecar, opened on first need; None where the binding has no BM25. Raises
        RuntimeError where it has, and the sidecar is missing or held by another process."""
        info = self._info
        if info is None or not info.sparse:
            return None
        with self._bm25_lock:
            if self._bm25 is None:
                where = self._bm25_dir
                if where is None or not (where / META_FILE).exists():
                    raise RuntimeError(
                        f"{self.location} is bound with BM25, and its sidecar "
                        f"({where or 'no data_dir given'}) is missing"
                    )
                self._bm25 = EdgeStore(self.name, where, SIDECAR)
            return self._bm25

    def _create_sidecar(self, info: IndexInfo) -> None:
        assert self._bm25_dir is not None
        with self._bm25_lock:
            if self._bm25 is None:
                self._bm25 = EdgeStore(self.name, self._bm25_dir, SIDECAR)
            self._bm25.create(IndexInfo(dim=1, fingerprint=info.fingerprint, sparse=True))

    @staticmethod
    def _bm25_point(p: PointWrite) -> PointWrite:
        """What the sidecar holds of a record: no text, no dense vector."""
        return PointWrite(
            doc_id=p.doc_id,
            text="",
            text_sha256=p.text_sha256,
            metadata=p.metadata,
            sparse=p.sparse,
        )

    def bm25_divergence(self) -> set[str]:
        """The doc ids where the sidecar is out of step with the collection (an id on one side
        only, or another text): the ones a sweep rewrites. O(n): a verify, not a query."""
        side = self._sidecar()
        if side is None:
            return set()

        def hashes(store: VectorStore) -> dict[str, Any]:
            return {
                v["doc_id"]: v.get("text_sha256")
                for batch in store.scroll(1024, ["text_sha256"])
                for v in batch
            }

        ours, theirs = hashes(self), hashes(side)
        return {d for d in ours.keys() | theirs.keys() if ours.get(d) != theirs.get(d)}

    @property
    def bm25_sidecar(self) -> bool:  # type: ignore[override]
        """Whether the binding keeps BM25 in a sidecar (read from the cached binding)."""
        info = self._info
        return info is not None and info.sparse

    def sidecar_missing(self) -> str | None:
        try:
            self._sidecar()
        except RuntimeError as e:
            return str(e)
        return None

    def sidecar_position(self) -> int | None:
        mark = self._position_file()
        if mark is None or not mark.exists() or self.sidecar_missing() is not None:
            return None
        return int(json.loads(mark.read_text())["seq"])

    def set_sidecar_position(self, seq: int) -> None:
        mark = self._position_file()
        assert mark is not None, "no data_dir given for the BM25 sidecar"
        write_json_atomic(mark, {"seq": seq})

    def _position_file(self) -> Path | None:
        """Inside the sidecar's directory: a rebuild (renamed over it) starts without one."""
        return None if self._bm25_dir is None else self._bm25_dir / "fleet-position.json"

    def repair_bm25(
        self, document: Callable[[str], Sparse], doc_ids: Iterable[str] | None = None
    ) -> int:
        """Rewrite the sidecar from the collection (its texts, hashes and metadata; `document`
        is the BM25 encoder's): the records of `doc_ids` (a divergence: an id the collection
        lacks is removed), or with None all of it, into a fresh sidecar built beside the old
        one and renamed over it (a crash leaves the old one, never half a new one). Under
        the store's write lock: this process's writes wait. Returns the ids written or
        removed."""
        info = self.info()
        if info is None or not info.sparse:
            raise RuntimeError(f"{self.location} keeps no BM25 sidecar")
        if self._bm25_dir is None:
            raise RuntimeError(f"{self.location}: no data_dir given for its BM25 sidecar")
        fields = ["text", "text_sha256", "metadata"]
        with self._lock:
            if doc_ids is not None:
                side = self._sidecar()
                assert side is not None
                ids = _unique(list(doc_ids))
                got = self.retrieve(ids, fields)
                for chunk in _chunks([got[d] for d in ids if d in got], 512):
                    side.upsert([self._bm25_view(v, document) for v in chunk])
                gone = [d for d in ids if d not in got]
                if gone:
                    side.delete(gone)
                return len(ids)
            fresh = self._bm25_dir.with_name(self._bm25_dir.name + ".rebuild")
            shutil.rmtree(fresh, ignore_errors=True)
            built = EdgeStore(self.name, fresh, SIDECAR)
            n = 0
            try:
                built.create(IndexInfo(dim=1, fingerprint=info.fingerprint, sparse=True))
                for batch in self.scroll(512, fields):
                    built.upsert([self._bm25_view(v, document) for v in batch])
                    n += len(batch)
            finally:
                built.close()
            with self._bm25_lock:
                if self._bm25 is not None:
                    self._bm25.close()
                    self._bm25 = None
                shutil.rmtree(self._bm25_dir, ignore_errors=True)
                os.replace(fresh, self._bm25_dir)
            return n

    @staticmethod
    def _bm25_view(v: dict[str, Any], document: Callable[[str], Sparse]) -> PointWrite:
        """A record read back (`view`) as what the sidecar holds of it."""
        text = v.get("text") or ""
        return PointWrite(
            doc_id=v["doc_id"],
            text="",
            text_sha256=v.get("text_sha256") or "",
            metadata=v.get("metadata") or {},
            sparse=document(text),
        )

    # --- faults and first contact ------------------------------------------------------
    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Around every client call: transport faults (refused, timed out, a 5xx from the
        server or a proxy before it) raised as IndexUnavailable."""
        try:
            yield
        except (httpx.TransportError, _ServerFault) as e:
            raise self._unavailable(e) from e
        except ChromaError as e:
            if e.code() < 500:
                raise
            raise self._unavailable(e) from e

    def _unavailable(self, e: Exception) -> IndexUnavailable:
        if isinstance(e, httpx.TimeoutException):
            reason = f"no answer within {self._cfg.timeout_s}s"
        elif "refused" in str(e).lower():
            reason = "connection refused"
        else:
            reason = " ".join(str(e).split()) or type(e).__name__
        return IndexUnavailable(self.name, f"chroma at {self._url}", reason)

    def _connected(self) -> ClientAPI:
        if self._client is None:
            self._client = acquire_client(self._cfg)
        return self._client

    def _read_binding(self) -> IndexInfo | None:
        """In the collection's metadata (and the collection's handle kept, when it is ours)."""
        with self._guard():
            try:
                col = self._connected().get_collection(self.collection, embedding_function=None)
            except NotFoundError:
                col = None
        info = self._binding_of(col) if col is not None else None
        self._col = col if info is not None else None
        self._model = col  # (the collection as the server describes it, bound or not)
        if self._col is not None:
            self._apply_ef_search(self._col)
        if info is not None and info.sparse:
            self._info = info  # (so the sidecar can be opened now)
            with suppress(RuntimeError):
                self.sparse  # noqa: B018  # opened, or the warning logged, at first contact
        return info

    def _hnsw(self) -> dict[str, Any]:
        """The collection's configuration: cosine, and `ef_search` where configured."""
        ef = self._cfg.ef_search
        return {"hnsw": {**COSINE["hnsw"], **({"ef_search": ef} if ef else {})}}

    def _apply_ef_search(self, col: Collection) -> None:
        """A configured `ef_search` that a collection of ours lacks (created before it was
        set) is set on it: a search breadth, not a property of the data."""
        ef = self._cfg.ef_search
        have = ((col.configuration or {}).get("hnsw") or {}).get("ef_search")
        if ef and have != ef:
            with self._guard():
                col.modify(configuration={"hnsw": {"ef_search": ef}})

    def _heartbeat(self) -> None:
        with self._guard():
            self._connected().heartbeat()

    def _coll(self) -> Collection:
        if self.info() is None or self._col is None:
            raise RuntimeError(f"index {self.name!r} ({self.location}) does not exist yet")
        return self._col

    def persisted_embedding_function(self) -> dict[str, Any] | None:
        """From the collection's model as read at first contact (no request)."""
        self.info()  # (first contact)
        col = self._col or self._model
        if col is None:
            return None
        ef = (col.configuration_json or {}).get("embedding_function")
        return ef if isinstance(ef, dict) and ef.get("type") == "known" else None

    def _max_batch(self) -> int:
        if self._batch is None:
            with self._guard():
                self._batch = int(self._connected().get_max_batch_size())
        return self._batch

    # --- lifecycle ---------------------------------------------------------------------
    def create(self, info: IndexInfo) -> None:
        # BM25 where asked for and a sidecar directory was given
        bm25 = info.sparse and self._bm25_dir is not None
        want = IndexInfo(dim=info.dim, fingerprint=info.fingerprint, sparse=bm25)
        have = self.info()
        if have is None:
            with self._guard(), self._lock:
                col = self._connected().get_or_create_collection(
                    self.collection,
                    configuration=self._hnsw(),  # type: ignore[arg-type]
                    metadata={BINDING: json.dumps(asdict(want))},
                    embedding_function=None,
                )
            have = _binding(col.metadata)
            if have is None:
                raise RuntimeError(
                    f"{self.location} exists and is not crossfade's (no binding in its metadata)"
                )
            self._col, self._info = col, have
            if have == want and bm25:
                self._create_sidecar(have)
        if have != want:
            raise RuntimeError(f"{self.location} exists, bound to {have}")

    def drop(self) -> None:
        """Its records deleted first: Chroma 1.5.9 keeps a dropped collection's array-valued
        metadata (our `crossfade:paths`) and gives it to the records of a collection created
        later on the same server, whatever their ids (any app's); deleted records' don't."""
        with self._guard(), self._lock, suppress(NotFoundError):
            client = self._connected()
            col = client.get_collection(self.collection, embedding_function=None)
            while ids := col.get(limit=self._max_batch(), include=[])["ids"]:
                col.delete(ids=ids)
            client.delete_collection(self.collection)
        self._col, self._info, self._loaded = None, None, True
        self._cursors.clear()
        with self._bm25_lock:
            if self._bm25 is not None:
                self._bm25.drop()
                self._bm25 = None

    def close(self) -> None:
        with self._bm25_lock:
            if self._bm25 is not None:
                self._bm25.close()
                self._bm25 = None
        if self._client is not None:
            self._client = None
            release_client(self._cfg)

    def flush(self) -> None:
        """Writes already wait for the server's acknowledgement."""

    # --- writes ------------------------------------------------------------------------
    def upsert(self, points: Sequence[PointWrite]) -> None:
        info = self.info()
        check_fingerprints(info, points)
        assert info is not None
        col = self._coll()
        # one write per doc id: the last (Chroma refuses an id twice in one request)
        plain = list({p.doc_id: p for p in points if p.if_text_sha256 is None}.values())
        redo = [p for p in points if p.if_text_sha256 is not None and p.dense is not None]
        # (raises before anything is written where it is missing); a re-embed keeps its text
        # and so its BM25 vector: a fleet's worker, which keeps no sidecar, writes re-embeds
        side = self._sidecar() if plain else None
        with self._guard(), self._lock:
            for chunk in _chunks(plain, self._max_batch()):
                self._write(col, chunk, info.dim)
            for chunk in _chunks(redo, self._max_batch()):
                self._update_if_same_text(col, chunk)
            # then BM25, under the same lock (the same order of writes on both); a re-embed
            # keeps its text, and so its BM25 vector
            if side is not None and plain:
                side.upsert([self._bm25_point(p) for p in plain])

    def _write(self, col: Collection, points: Sequence[PointWrite], dim: int) -> None:
        """Whole records: the keys a record held that its new metadata lacks are nulled
        (Chroma's upsert merges metadata)."""
        ids = [p.doc_id for p in points]
        before = col.get(ids=ids, include=["metadatas"])  # type: ignore[list-item]
        held = {
            i: set(m or ()) for i, m in zip(before["ids"], before["metadatas"] or [], strict=True)
        }
        records = [self._record(p, held.get(p.doc_id, set())) for p in points]
        vectors = [
            np.asarray(p.dense, dtype=np.float32)
            if p.dense is not None
            else placeholder(p.doc_id, dim)
            for p in points
        ]
        col.upsert(
            ids=ids,
            embeddings=np.stack(vectors),
            documents=[d for _, d in records] if any(d is not None for _, d in records) else None,  # type: ignore[misc]
            metadatas=[m for m, _ in records] if any(m for m, _ in records) else None,  # type: ignore[misc]
        )

    def _update_if_same_text(self, col: Collection, points: Sequence[PointWrite]) -> None:
        """Re-embeds: the vector and its bookkeeping, only where the stored text is still the
        one embedded (read, compared and written under the store's lock); a point deleted
        meanwhile is skipped."""
        got = col.get(ids=_unique([p.doc_id for p in points]), include=["metadatas"])  # type: ignore[list-item]
        stored = dict(zip(got["ids"], got["metadatas"] or [], strict=True))
        ids, vectors, metas = [], [], []
        for p in points:
            meta = stored.get(p.doc_id)
            if meta is None or meta.get("text_sha256") != p.if_text_sha256 or p.doc_id in ids:
                continue
            marks = {k: v for k, v in p.bookkeeping().items() if v is not None}
            paths = list(dict.fromkeys([*(meta.get(PATHS) or []), *marks]))  # type: ignore[misc]
            ids.append(p.doc_id)
            vectors.append(np.asarray(p.dense, dtype=np.float32))
            metas.append({DENSE: True, **marks, PATHS: paths})
        if ids:
            col.update(ids=ids, embeddings=np.stack(vectors), metadatas=metas)  # type: ignore[arg-type]

    def delete(self, doc_ids: Sequence[str]) -> None:
        col = self._coll()
        ids = _unique(doc_ids)
        side = self._sidecar()
        with self._guard(), self._lock:
            for chunk in _chunks(ids, self._max_batch()):
                col.delete(ids=list(chunk))
            if side is not None and ids:
                side.delete(ids)

    def why_no_text(self, doc_id: str) -> str:
        return "no stored text"

    # --- reads -------------------------------------------------------------------------
    def _get(self, **kw: Any) -> Any:
        with self._guard():
            return self._coll().get(**kw)

    def _by_ids(self, doc_ids: Sequence[str], dense: bool = False, **kw: Any) -> Iterator[Any]:
        """The records of `doc_ids` (`dense`: only those holding a real vector). Never
        `get(ids=..., where=...)`, which Chroma 1.5 answers by scanning (1.3 s for 200 ids of
        5,000 records, against 20-40 ms without the where, local or server): where the layout
        has an id key the ids go into the where; where it has none, the dense marker is read
        from the records' metadata."""
        for chunk in _chunks(_unique(doc_ids), self._max_batch()):
            if not dense:
                yield self._get(ids=list(chunk), **kw)
            elif self.KEYS.ids_in_where:
                where = {"$and": [self.DENSE_WHERE, self.KEYS.has_id(chunk, False)]}
                yield self._get(where=where, **kw)
            else:
                include = kw.pop("include", [])
                got = self._get(ids=list(chunk), include=[*include, "metadatas"], **kw)
                keep = [self._is_dense(m) for m in got["metadatas"] or []]
                yield {
                    k: [x for x, yes in zip(v, keep, strict=True) if yes]
                    for k, v in got.items()
                    if k in ("ids", *include) and v is not None
                }

    def _is_dense(self, meta: dict[str, Any] | None) -> bool:
        """Whether a record's metadata says it holds a real vector (not a placeholder)."""
        return bool((meta or {}).get(DENSE))

    def search_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]:
        return [(v["doc_id"], s) for v, s in self._query(vector, limit, flt, ())]

    def query_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None, fields: Sequence[str]
    ) -> list[tuple[dict[str, Any], float]]:
        return self._query(vector, limit, flt, fields)

    def _query(
        self, vector: np.ndarray, limit: int, flt: Filter | None, fields: Sequence[str]
    ) -> list[tuple[dict[str, Any], float]]:
        sel = self._select(flt, self.DENSE_WHERE)
        if limit <= 0 or sel["where"] is NOTHING:
            return []
        with self._guard():
            res = self._coll().query(
                query_embeddings=[np.asarray(vector, dtype=np.float32)],
                n_results=limit,
                **sel,
                include=["distances", *self._include(fields)],  # type: ignore[list-item]
            )
        got = {k: (v[0] if v else None) for k, v in res.items() if k != "included"}
        # cosine distance is 1 - cosine similarity
        scores = [1.0 - float(d) for d in got["distances"] or []]
        return list(zip(self._views(got, fields), scores, strict=True))

    def search_sparse(
        self, sparse: Sparse, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]:
        """BM25 from the sidecar, which filters on its own copy of the metadata."""
        side = self._sidecar() if self.sparse else None
        if side is None:
            raise NotImplementedError(
                f"{self.location}: Chroma has no BM25 and this index has no BM25 sidecar "
                "(`sparse` is False)"
            )
        if self._select(flt)["where"] is NOTHING:  # (refused here where Chroma would refuse it)
            return []
        return side.search_sparse(sparse, limit, flt)

    def with_dense(self, doc_ids: Sequence[str]) -> set[str]:
        if not doc_ids:
            return set()
        out: set[str] = set()
        for got in self._by_ids(doc_ids, dense=True, include=[]):
            out.update(got["ids"])
        return out

    @staticmethod
    def _vectors(got: Any) -> dict[str, np.ndarray]:
        embeddings = got["embeddings"] if got["embeddings"] is not None else []
        return {
            i: np.asarray(e, dtype=np.float32) for i, e in zip(got["ids"], embeddings, strict=True)
        }

    def dense_vectors(self, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if doc_ids:
            for got in self._by_ids(doc_ids, dense=True, include=["embeddings"]):
                out.update(self._vectors(got))
        return out

    def dense_sample(self, limit: int) -> dict[str, np.ndarray]:
        if self.info() is None or limit <= 0:
            return {}
        return self._vectors(self._get(where=self.DENSE_WHERE, limit=limit, include=["embeddings"]))

    def retrieve(
        self, doc_ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if doc_ids:
            for got in self._by_ids(doc_ids, include=self._include(fields)):
                out.update((v["doc_id"], v) for v in self._views(got, fields))
        return out

    def scroll(
        self, batch: int = 256, fields: Sequence[str] | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        if self.info() is None:
            return
        offset = 0
        while True:
            got = self._get(limit=batch, offset=offset, include=self._include(fields))
            if got["ids"]:
                yield self._views(got, fields)
            if len(got["ids"]) < batch:
                return
            offset += batch

    def _ids(self, sel: Selection, start: int = 0) -> Iterator[list[str]]:
        """The ids matching `sel` in the collection's order, a page at a time."""
        offset = start
        while True:
            ids = self._get(**sel, limit=_PAGE, offset=offset, include=[])["ids"]
            yield ids
            if len(ids) < _PAGE:
                return
            offset += _PAGE

    def _count(self, sel: Selection) -> int:
        if sel["where"] is NOTHING:
            return 0
        return sum(len(ids) for ids in self._ids(sel))

    def count(self, dense_only: bool = False) -> int:
        if self.info() is None:
            return 0
        if dense_only:
            return self._count({"where": self.DENSE_WHERE})
        with self._guard():
            return int(self._coll().count())

    def count_matching(self, flt: Filter | FilterTree | None) -> int:
        if flt is None:
            return self.count()
        if self.info() is None:
            return 0
        return self._count(self._select(flt))

    def _offset_of(self, sel: Selection, key: str, doc_id: str) -> int | None:
        """Where `doc_id` sits among the records matching `sel`: remembered from the page
        that returned it (if it is still there), else sought."""
        with self._cursors_lock:
            known = self._cursors.get((key, doc_id))
        if known is not None and self._get(**sel, limit=1, offset=known, include=[])["ids"] == [
            doc_id
        ]:
            return known
        base = 0
        for ids in self._ids(sel):
            if doc_id in ids:
                return base + ids.index(doc_id)
            base += len(ids)
        return None

    def page(
        self, flt: Filter | FilterTree | None, limit: int, start: str | None, fields: Sequence[str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        if self.info() is None:
            return [], None
        sel = self._select(flt)
        if sel["where"] is NOTHING:
            return [], None
        key = json.dumps(sel, sort_keys=True)
        offset = 0 if start is None else self._offset_of(sel, key, start)
        if offset is None:  # the start is gone (deleted meanwhile)
            return [], None
        got = self._get(**sel, limit=limit + 1, offset=offset, include=self._include(fields))
        views = self._views(got, fields)
        if len(views) <= limit:
            return views, None
        nxt = views[limit]["doc_id"]
        with self._cursors_lock:
            self._cursors[(key, nxt)] = offset + limit
            while len(self._cursors) > _CURSORS:
                self._cursors.popitem(last=False)
        return views[:limit], nxt

    def without_dense(self, limit: int) -> list[str]:
        if self.info() is None or limit <= 0:
            return []
        return list(self._get(where=self.NO_DENSE_WHERE, limit=limit, include=[])["ids"])

    def has_payload_field(self, field: str) -> bool:
        if self.info() is None:
            return False
        where = _present(chroma_path(field))
        return bool(self._get(where=where, limit=1, include=[])["ids"])

    def fingerprints(self) -> dict[str, int]:
        """Counted by filter for the bound model; the rest (vectors written by another model,
        rare) named from their metadata."""
        info = self.info()
        if info is None:
            return {}
        dense = self._count({"where": {DENSE: True}})
        bound = self._count(
            {"where": {"$and": [{DENSE: True}, {"model_fingerprint": info.fingerprint}]}}
        )
        facets = Counter({info.fingerprint: bound} if bound else {})
        if dense > bound:
            other = {"$and": [{DENSE: True}, {"model_fingerprint": {"$ne": info.fingerprint}}]}
            offset = 0
            while True:
                got = self._get(where=other, limit=_PAGE, offset=offset, include=["metadatas"])
                facets.update(
                    str(m["model_fingerprint"])
                    for m in got["metadatas"] or []
                    if m and "model_fingerprint" in m
                )
                if len(got["ids"]) < _PAGE:
                    break
                offset += _PAGE
        return fingerprint_counts(dict(facets), dense)
