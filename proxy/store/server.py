"""Qdrant server adapter through qdrant-client.

`url: ":memory:"` (or `url: "local:/some/dir"`) uses qdrant-client's local mode, which speaks the
same client API; that is how this adapter is tested where no Qdrant server can run. The bound
fingerprint lives in the collection's metadata, so every replica sees the same binding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import httpx
import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from proxy.config import IndexConfig
from proxy.filters import Clause, Condition, Filter, FilterTree, HasId, IsEmpty
from proxy.store import (
    FirstContact,
    IndexInfo,
    IndexUnavailable,
    PointWrite,
    Sparse,
    VectorStore,
    check_fingerprints,
    fingerprint_counts,
    point_id,
    public_url,
)

_META_KEY = "crossfade"


def _condition(c: Condition) -> qm.FieldCondition:
    if c.range is not None:
        r = c.range
        return qm.FieldCondition(
            key=c.field, range=qm.Range(gt=r.gt, gte=r.gte, lt=r.lt, lte=r.lte)
        )
    m = c.match
    assert m is not None
    if m.any is not None:
        return qm.FieldCondition(key=c.field, match=qm.MatchAny(any=m.any))
    if m.except_ is not None:
        return qm.FieldCondition(key=c.field, match=qm.MatchExcept(**{"except": m.except_}))
    return qm.FieldCondition(key=c.field, match=qm.MatchValue(value=m.value))


def to_qdrant_filter(
    flt: Filter | FilterTree | None,
    key: Callable[[str], str] = lambda f: f,
    pid: Callable[[str], int | str] = point_id,
) -> qm.Filter | None:
    """`key` maps a payload path of crossfade's layout (`metadata.topic`) to the index's own,
    `pid` a doc id to the index's point id."""
    if flt is None:
        return None

    def clause(c: Clause) -> Any:
        if isinstance(c, Condition):
            out = _condition(c)
            out.key = key(out.key)
            return out
        if isinstance(c, IsEmpty):
            return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=key(c.field)))
        if isinstance(c, HasId):
            return qm.HasIdCondition(has_id=[pid(d) for d in c.doc_ids])
        return to_qdrant_filter(c, key, pid)

    def conds(cs: Sequence[Clause]) -> list[Any] | None:
        return [clause(c) for c in cs] or None

    return qm.Filter(must=conds(flt.must), should=conds(flt.should), must_not=conds(flt.must_not))


_shared: dict[tuple[str, str | None], tuple[QdrantClient, int]] = {}
_shared_lock = threading.Lock()
# Local mode is plain Python and not thread-safe; its instances share one lock.
_local_mode_lock = threading.Lock()


def make_client(cfg: IndexConfig) -> QdrantClient:
    """One client per (url, key) in a process: the old and new collections of one Qdrant
    (or of one local-mode instance, which can be opened only once) share it, so an alias can
    point from one to the other."""
    url = cfg.url or ""
    secret = cfg.api_key.get_secret_value() if cfg.api_key else None
    key = (url, secret)
    with _shared_lock:
        if key in _shared:
            client, refs = _shared[key]
            _shared[key] = (client, refs + 1)
            return client
        if url == ":memory:":
            client = QdrantClient(location=":memory:")
        elif url.startswith("local:"):
            client = QdrantClient(path=url.removeprefix("local:"))
        else:
            # No version check at construction: it is a blocking request that, with the
            # server down, delays start-up by a timeout; readiness probes the server instead.
            client = QdrantClient(
                url=url, api_key=secret, timeout=cfg.timeout_s, check_compatibility=False
            )
        _shared[key] = (client, 1)
        return client


def release_client(cfg: IndexConfig) -> None:
    key = (cfg.url or "", cfg.api_key.get_secret_value() if cfg.api_key else None)
    with _shared_lock:
        client, refs = _shared[key]
        if refs > 1:
            _shared[key] = (client, refs - 1)
            return
        del _shared[key]
    client.close()


class ServerStore(FirstContact, VectorStore):
    remote = True  # local mode too: its calls wait on one lock, so probes go off the loop
    sparse = True  # BM25, with the server's IDF modifier
    aliases = True
    # (the server has named vectors, but crossfade's own layout migrates to a collection
    # beside; in place is for an edge shard or an adopted collection)
    named_vectors = False

    def __init__(self, name: str, cfg: IndexConfig, client: QdrantClient | None = None) -> None:
        self.name = name
        self.collection = cfg.collection
        self.vector = cfg.vector
        self.sparse_vector = cfg.sparse_vector
        self._cfg = cfg
        self._owned = client is None
        self.client = client or make_client(cfg)
        self._local = (cfg.url or "").startswith((":memory:", "local:"))
        self._lock = _local_mode_lock
        self._first_contact()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Around every client call: local mode's lock, and transport faults (refused,
        timed out, a 5xx from the server or a proxy before it) raised as IndexUnavailable."""
        with self._lock if self._local else nullcontext():
            try:
                yield
            except (ResponseHandlingException, httpx.TransportError) as e:
                raise self._unavailable(e) from e
            except UnexpectedResponse as e:
                if e.status_code is None or e.status_code < 500:
                    raise
                raise self._unavailable(e) from e

    def _unavailable(self, e: Exception) -> IndexUnavailable:
        src = getattr(e, "source", None) or e
        if isinstance(src, httpx.TimeoutException):
            reason = f"no answer within {self._cfg.timeout_s}s"
        elif "refused" in str(src).lower():
            reason = "connection refused"
        elif isinstance(e, UnexpectedResponse):
            reason = f"HTTP {e.status_code} {e.reason_phrase}"
        else:
            reason = " ".join(str(src).split()) or type(src).__name__
        return IndexUnavailable(self.name, f"qdrant at {public_url(self._cfg.url or '')}", reason)

    def _read_binding(self) -> IndexInfo | None:
        """In the collection's metadata, so every replica sees the same binding."""
        with self._guard():
            if not self.client.collection_exists(self.collection):
                return None
            meta = self.client.get_collection(self.collection).config.metadata or {}
        return IndexInfo(**meta[_META_KEY]) if _META_KEY in meta else None

    @property
    def location(self) -> str:
        return f"qdrant collection {self.collection!r}"

    def _heartbeat(self) -> None:
        if self._local:  # in-process: nothing to reach (and no wait on its lock)
            return
        with self._guard():
            self.client.collection_exists(self.collection)

    def create(self, info: IndexInfo) -> None:
        if self.info() is not None:
            if self._info != info:
                raise RuntimeError(f"collection {self.collection!r} exists, bound to {self._info}")
            return
        sparse = (
            {self.sparse_vector: qm.SparseVectorParams(modifier=qm.Modifier.IDF)}
            if info.sparse
            else None
        )
        with self._guard():
            self.client.create_collection(
                self.collection,
                vectors_config={
                    self.vector: qm.VectorParams(size=info.dim, distance=qm.Distance.COSINE)
                },
                sparse_vectors_config=sparse,
                metadata={_META_KEY: dict(info.__dict__)},
            )
            # Local mode has no payload indexes (and warns); a server needs them at scale.
            for fld in () if self._local else ("doc_id", "text_sha256", "model_fingerprint"):
                self.client.create_payload_index(self.collection, fld, qm.PayloadSchemaType.KEYWORD)
        self._info = info

    # Layout hooks: crossfade's own payload layout here; an adopted collection keeps its own
    # (proxy/store/adopted.py overrides these).
    def _pid(self, doc_id: str) -> int | str:
        return point_id(doc_id)

    def _select(self, fields: Sequence[str] | None) -> Any:
        """The payload to fetch for the view's `fields` (None = everything)."""
        return list(fields) + ["doc_id"] if fields is not None else True

    def _view(self, rec: Any) -> dict[str, Any] | None:
        """A stored point as crossfade's payload view (doc_id, text, metadata, ...)."""
        return rec.payload

    def _key(self, path: str) -> str:
        """A payload path of crossfade's layout in this index."""
        return path

    def _vectors(self, p: PointWrite) -> dict[str, Any]:
        vec: dict[str, Any] = {}
        if p.dense is not None:
            vec[self.vector] = np.asarray(p.dense, dtype=np.float32).tolist()
        if p.sparse is not None and self._info and self._info.sparse:
            vec[self.sparse_vector] = qm.SparseVector(
                indices=p.sparse.indices, values=p.sparse.values
            )
        return vec

    def _point(self, p: PointWrite) -> qm.PointStruct:
        return qm.PointStruct(id=point_id(p.doc_id), vector=self._vectors(p), payload=p.payload())

    def upsert(self, points: Sequence[PointWrite]) -> None:
        check_fingerprints(self.info(), points)
        plain = [self._point(p) for p in points if p.if_text_sha256 is None]
        with self._guard():
            if plain:
                self.client.upsert(self.collection, plain, wait=True)
            for p in points:  # re-embeds: vectors only, a payload read earlier never written back
                if p.if_text_sha256 is not None:
                    self._update_if_same_text(p)

    # Whether points carry the bookkeeping payload (an adopted collection's don't).
    carries_bookkeeping = True

    def _same_text(self, p: PointWrite) -> qm.Filter | None:
        """Conditional write: only while the stored text is still the one embedded."""
        key, sha = self._key("text_sha256"), p.if_text_sha256 or p.text_sha256
        return qm.Filter(must=[qm.FieldCondition(key=key, match=qm.MatchValue(value=sha))])

    def _update_if_same_text(self, p: PointWrite) -> None:
        """The vectors of a re-embed, then their bookkeeping, each only while the stored text
        is the one embedded; a point deleted meanwhile is skipped."""
        pid, same = self._pid(p.doc_id), self._same_text(p)
        vectors = qm.PointVectors(id=pid, vector=self._vectors(p))
        try:
            self.client.update_vectors(self.collection, [vectors], wait=True, update_filter=same)
        except KeyError:  # local mode: no such point
            return
        except UnexpectedResponse as e:
            if e.status_code == 404:
                return
            raise
        if self.carries_bookkeeping and (marks := p.bookkeeping()):
            must = [qm.HasIdCondition(has_id=[pid]), *((same.must or []) if same else [])]
            self.client.set_payload(self.collection, marks, points=qm.Filter(must=must), wait=True)

    def why_no_text(self, doc_id: str) -> str:
        return "no stored text"

    def delete(self, doc_ids: Sequence[str]) -> None:
        with self._guard():
            self.client.delete(
                self.collection,
                qm.PointIdsList(points=[self._pid(d) for d in doc_ids]),
                wait=True,
            )

    def flush(self) -> None:
        """Writes already wait for the server's acknowledgement."""

    def _search(
        self, query: Any, using: str, limit: int, flt: Filter | None, fields: Sequence[str] = ()
    ) -> list[tuple[dict[str, Any], float]]:
        with self._guard():
            res = self.client.query_points(
                self.collection,
                query=query,
                using=using,
                limit=limit,
                query_filter=to_qdrant_filter(flt, self._key, self._pid),
                with_payload=self._select(fields),
            )
        views = [(self._view(p), float(p.score)) for p in res.points]
        return [(v, s) for v, s in views if v]

    def search_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]:
        return [(p["doc_id"], s) for p, s in self.query_dense(vector, limit, flt, ())]

    def query_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None, fields: Sequence[str]
    ) -> list[tuple[dict[str, Any], float]]:
        vec = np.asarray(vector, dtype=np.float32).tolist()
        return self._search(vec, self.vector, limit, flt, fields)

    def search_sparse(
        self, sparse: Sparse, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]:
        if not sparse.indices:
            return []
        q = qm.SparseVector(indices=sparse.indices, values=sparse.values)
        return [(p["doc_id"], s) for p, s in self._search(q, self.sparse_vector, limit, flt)]

    def with_dense(self, doc_ids: Sequence[str]) -> set[str]:
        return self._holding(doc_ids, self.vector)

    def _holding(self, doc_ids: Sequence[str], vector: str) -> set[str]:
        """The ids among `doc_ids` whose point holds `vector`."""
        if not doc_ids:
            return set()
        flt = qm.Filter(
            must=[
                qm.HasIdCondition(has_id=[self._pid(d) for d in doc_ids]),
                qm.HasVectorCondition(has_vector=vector),
            ]
        )
        with self._guard():
            recs, _ = self.client.scroll(
                self.collection,
                scroll_filter=flt,
                limit=len(doc_ids),
                with_payload=self._select(()),
            )
        return {v["doc_id"] for v in map(self._view, recs) if v}

    def _dense_of(self, recs: Sequence[Any]) -> dict[str, np.ndarray]:
        out = {}
        for r in recs:
            v = r.vector.get(self.vector) if isinstance(r.vector, dict) else r.vector
            view = self._view(r)
            if v is not None and view:
                out[view["doc_id"]] = np.asarray(v, dtype=np.float32)
        return out

    def dense_vectors(self, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not doc_ids:
            return {}
        with self._guard():
            recs = self.client.retrieve(
                self.collection,
                [self._pid(d) for d in doc_ids],
                with_payload=self._select(()),
                with_vectors=[self.vector] if self.vector else True,
            )
        return self._dense_of(recs)

    def dense_sample(self, limit: int) -> dict[str, np.ndarray]:
        has = qm.Filter(must=[qm.HasVectorCondition(has_vector=self.vector)])
        with self._guard():
            recs, _ = self.client.scroll(
                self.collection,
                scroll_filter=has if self.vector else None,
                limit=limit,
                with_payload=self._select(()),
                with_vectors=[self.vector] if self.vector else True,
            )
        return self._dense_of(recs)

    def retrieve(
        self, doc_ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        if not doc_ids:
            return {}
        with self._guard():
            recs = self.client.retrieve(
                self.collection, [self._pid(d) for d in doc_ids], with_payload=self._select(fields)
            )
        return {v["doc_id"]: v for v in map(self._view, recs) if v}

    def scroll(
        self, batch: int = 256, fields: Sequence[str] | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        sel = self._select(fields)
        offset = None
        while True:
            with self._guard():
                recs, offset = self.client.scroll(
                    self.collection, limit=batch, offset=offset, with_payload=sel
                )
            if recs:
                yield [v for v in map(self._view, recs) if v]
            if offset is None:
                return

    def count(self, dense_only: bool = False) -> int:
        if self.info() is None:
            return 0
        flt = (
            qm.Filter(must=[qm.HasVectorCondition(has_vector=self.vector)]) if dense_only else None
        )
        with self._guard():
            return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def page(
        self, flt: Filter | FilterTree | None, limit: int, start: str | None, fields: Sequence[str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        if self.info() is None:
            return [], None
        with self._guard():
            recs, _ = self.client.scroll(
                self.collection,
                scroll_filter=to_qdrant_filter(flt, self._key, self._pid),
                limit=limit + 1,
                offset=self._pid(start) if start is not None else None,
                with_payload=self._select(fields),
            )
        views = [v for v in map(self._view, recs) if v]
        return views[:limit], views[limit]["doc_id"] if len(views) > limit else None

    def count_matching(self, flt: Filter | FilterTree | None) -> int:
        if self.info() is None:
            return 0
        qf = to_qdrant_filter(flt, self._key, self._pid)
        with self._guard():
            return int(self.client.count(self.collection, count_filter=qf, exact=True).count)

    def _member(self) -> qm.Filter | None:
        """Which of the collection's points belong to this index (None: all of them)."""
        return None

    def without_dense(self, limit: int) -> list[str]:
        # Members only: in place, a point never seeded (no text) is not the sweep's to embed.
        member = self._member()
        flt = qm.Filter(
            must=[member] if member else None,
            must_not=[qm.HasVectorCondition(has_vector=self.vector)],
        )
        with self._guard():
            recs, _ = self.client.scroll(
                self.collection, scroll_filter=flt, limit=limit, with_payload=self._select(())
            )
        return [v["doc_id"] for v in map(self._view, recs) if v]

    def has_payload_field(self, field: str) -> bool:
        return self.info() is not None and self._any_point_holds(field)

    def _any_point_holds(self, field: str) -> bool:
        flt = qm.Filter(
            must_not=[qm.IsEmptyCondition(is_empty=qm.PayloadField(key=self._key(field)))]
        )
        with self._guard():
            recs, _ = self.client.scroll(
                self.collection, scroll_filter=flt, limit=1, with_payload=False
            )
        return bool(recs)

    def fingerprints(self) -> dict[str, int]:
        if self.info() is None:
            return {}
        has = qm.Filter(must=[qm.HasVectorCondition(has_vector=self.vector)])
        with self._guard():
            res = self.client.facet(
                self.collection, "model_fingerprint", facet_filter=has, limit=1000, exact=True
            )
        facets = {str(h.value): int(h.count) for h in res.hits}
        return fingerprint_counts(facets, self.count(dense_only=True))

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one request (atomic on the server): the serving
        pointer for clients outside the proxy."""
        create = qm.CreateAliasOperation(
            create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias)
        )
        with self._guard():
            existing = {a.alias_name for a in self.client.get_aliases().aliases}
            ops: list[Any] = [create]
            if alias in existing:
                ops.insert(
                    0, qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias))
                )
            self.client.update_collection_aliases(change_aliases_operations=ops)

    def alias_target(self, alias: str) -> str | None:
        with self._guard():
            for a in self.client.get_aliases().aliases:
                if a.alias_name == alias:
                    return a.collection_name
        return None

    def drop(self) -> None:
        with self._guard():
            if self.client.collection_exists(self.collection):
                self.client.delete_collection(self.collection)
        self._info = None

    def close(self) -> None:
        if self._owned:
            self._owned = False
            release_client(self._cfg)
