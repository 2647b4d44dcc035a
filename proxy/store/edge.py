"""Embedded adapter: qdrant-edge shards, in this process.

Edge has no collection metadata and no aliases, so what each dense vector of a shard is bound
to (model fingerprint, dimension) lives in `crossfade_index.json` beside the shard, written
atomically. A shard normally holds one index; `migrate start --in-place` adds the new model's
named vector (and the BM25 sparse vector) to the old index's live shard, and the new index is
a view of the same points through that vector (`in_place`). The engine lets one opener hold a
shard, so every view of it in this process shares one handle (`_Shard`).

Calls block; the query path runs them in worker threads. `optimize()` (HNSW build) is never
called here: it holds the GIL for its whole run and belongs to a scheduled job.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from proxy.config import IndexConfig
from proxy.filters import Clause, Condition, Filter, FilterTree, HasId, IsEmpty
from proxy.store import (
    BOOKKEEPING,
    IndexInfo,
    PointWrite,
    Sparse,
    VectorStore,
    check_fingerprints,
    fingerprint_counts,
    point_id,
    write_json_atomic,
)
from proxy.store.doc_ids import FILE as DOC_IDS_FILE
from proxy.store.doc_ids import DocIds

META_FILE = "crossfade_index.json"
# Per-point bookkeeping of the vector a shard was created with (see proxy/store/__init__.py).


def _condition(c: Condition) -> qe.FieldCondition:
    if c.range is not None:
        r = c.range
        return qe.FieldCondition(
            c.field, range=qe.RangeFloat(gt=r.gt, gte=r.gte, lt=r.lt, lte=r.lte)
        )
    m = c.match
    assert m is not None
    if m.any is not None:
        return qe.FieldCondition(c.field, match=qe.MatchAny(m.any))
    if m.except_ is not None:
        return qe.FieldCondition(c.field, match=qe.MatchExcept(m.except_))
    return qe.FieldCondition(c.field, match=qe.MatchValue(m.value))


def to_edge_filter(flt: Filter | FilterTree | None) -> qe.Filter | None:
    if flt is None:
        return None

    def clause(c: Clause) -> Any:
        if isinstance(c, Condition):
            return _condition(c)
        if isinstance(c, IsEmpty):
            return qe.IsEmptyCondition(c.field)
        if isinstance(c, HasId):
            return qe.HasIdCondition({point_id(d) for d in c.doc_ids})
        return to_edge_filter(c)

    return qe.Filter(
        must=[clause(c) for c in flt.must] or None,
        should=[clause(c) for c in flt.should] or None,
        must_not=[clause(c) for c in flt.must_not] or None,
    )


@dataclass
class Bindings:
    """What each dense vector of a shard is bound to, and which one the per-point bookkeeping
    payload describes (`tracked`: the vector the shard was created with). A vector added in
    place carries none: its binding says whose it is, and every write keeps it of the current
    text, so adding one never touches a point's payload."""

    vectors: dict[str, IndexInfo]
    tracked: str | None

    @classmethod
    def read(cls, path: Path, legacy_vector: str) -> Bindings:
        data = json.loads((path / META_FILE).read_text())
        if "vectors" not in data:  # one index per shard, as written before in-place existed
            return cls({legacy_vector: IndexInfo(**data)}, legacy_vector)
        vectors = {k: IndexInfo(**v) for k, v in data["vectors"].items()}
        return cls(vectors, data.get("tracked"))

    def write(self, path: Path) -> None:
        vectors = {k: asdict(v) for k, v in self.vectors.items()}
        write_json_atomic(path / META_FILE, {"vectors": vectors, "tracked": self.tracked})


class _Shard:
    """One open shard and its bindings, shared by every view of it in this process."""

    def __init__(self, path: Path, handle: qe.EdgeShard, bindings: Bindings) -> None:
        self.path, self.handle, self.bindings, self.refs = path, handle, bindings, 1
        self.doc_ids = DocIds(path)


_OPEN: dict[Path, _Shard] = {}
_OPEN_LOCK = threading.Lock()


def _acquire(name: str, path: Path, legacy_vector: str) -> _Shard:
    key = path.resolve()
    with _OPEN_LOCK:
        if key in _OPEN:
            _OPEN[key].refs += 1
            return _OPEN[key]
        bindings = Bindings.read(path, legacy_vector)
        try:
            handle = qe.EdgeShard.load(str(path))
        except Exception as e:
            if "WouldBlock" in str(e):
                raise RuntimeError(
                    f"the {name} index at {path} is open in another process (a running "
                    "`crossfade serve`?): use the proxy's HTTP API, or stop it first"
                ) from e
            raise
        _OPEN[key] = _Shard(path, handle, bindings)
        return _OPEN[key]


def _register(path: Path, handle: qe.EdgeShard, bindings: Bindings) -> _Shard:
    with _OPEN_LOCK:
        _OPEN[path.resolve()] = _Shard(path, handle, bindings)
        return _OPEN[path.resolve()]


def _release(shard: _Shard) -> None:
    with _OPEN_LOCK:
        shard.refs -= 1
        if shard.refs > 0:
            shard.handle.flush()
            return
        _OPEN.pop(shard.path.resolve(), None)
        shard.handle.flush()
        shard.handle.close()
        shard.doc_ids.close()


def _read_through(files: list[Path], budget: int) -> int:
    """Read `files` in order, up to `budget` bytes, into a buffer thrown away: their pages
    stay in the page cache. (posix_fadvise(WILLNEED) returns at once and, measured at 1M,
    left the first searches as slow as without it.)"""
    buf = memoryview(bytearray(8 << 20))
    done = 0
    for f in files:
        with f.open("rb", buffering=0) as fh:
            while done < budget and (n := fh.readinto(buf[: min(len(buf), budget - done)])):
                done += n
        if done >= budget:
            break
    return done


class EdgeStore(VectorStore):
    """One index: the dense vector `cfg.vector` of the shard at `path` (+ BM25 on the new
    side). `primary`: the vector a shard's bindings file of the one-index format describes
    (the old index's, when this view is the new one in place)."""

    sparse = True  # BM25, with the engine's IDF modifier
    named_vectors = True  # `--in-place` adds the new model's vector to the shard
    blocking_count = True  # the engine's exact count holds the GIL (0.5 s at 1M: scale.py)

    def __init__(self, name: str, path: Path, cfg: IndexConfig, primary: str | None = None) -> None:
        self.name = name
        self.path = path
        self.vector = cfg.vector
        self.sparse_vector = cfg.sparse_vector
        self._ref: _Shard | None = None
        if (path / META_FILE).exists():
            self._ref = _acquire(name, path, primary or cfg.vector)

    @property
    def _open(self) -> _Shard:
        if self._ref is None:
            raise RuntimeError(f"index {self.name!r} at {self.path} does not exist yet")
        return self._ref

    @property
    def shard(self) -> qe.EdgeShard:
        return self._open.handle

    def warm(self, budget: int) -> int:
        if self.info() is None:
            return 0
        # The doc-id map every hit is named from, then this index's dense vectors and graph
        # (BM25's index is loaded in memory already); the engine names their folders after
        # the vector, the unnamed one without a suffix.
        parts = [
            f"{p}-{self.vector}" if self.vector else p for p in ("vector_storage", "vector_index")
        ]
        segments = self.path / "segments"
        files = sorted(self.path.glob(DOC_IDS_FILE + "*")) + [
            f
            for segment in (sorted(segments.iterdir()) if segments.is_dir() else [])
            for part in parts
            for f in sorted((segment / part).rglob("*"))
            if f.is_file()
        ]
        return _read_through(files, budget)

    def info(self) -> IndexInfo | None:
        return self._ref.bindings.vectors.get(self.vector) if self._ref else None

    @property
    def tracked(self) -> bool:
        """Whether the points' bookkeeping payload describes this index's vector."""
        return self._ref is not None and self._ref.bindings.tracked == self.vector

    @property
    def in_place(self) -> bool:  # type: ignore[override]
        """Whether other indexes' vectors live in the same shard."""
        return self._ref is not None and len(self._ref.bindings.vectors) > 1

    @property
    def location(self) -> str:
        return f"edge shard {self.path}, vector {self.vector!r}"

    def create(self, info: IndexInfo) -> None:
        have = self.info()
        if have is not None:
            if have != info:
                raise RuntimeError(f"index {self.name!r} exists, bound to {have}")
            return
        if self._ref is not None:
            return self._add_vector(info)
        sparse = (
            {self.sparse_vector: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
            if info.sparse
            else None
        )
        config = qe.EdgeConfig(
            vectors={self.vector: qe.EdgeVectorParams(size=info.dim, distance=qe.Distance.Cosine)},
            sparse_vectors=sparse,
        )
        self.path.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(str(self.path), config)
        # Payload indexes keep counts and conditional writes cheap at scale.
        for fld in ("doc_id", "text_sha256", "model_fingerprint"):
            shard.update(qe.UpdateOperation.create_field_index(fld, qe.PayloadSchemaType.Keyword))
        bindings = Bindings({self.vector: info}, self.vector)
        bindings.write(self.path)
        self._ref = _register(self.path, shard, bindings)

    def _add_vector(self, info: IndexInfo) -> None:
        """In place: this index's vector (and BM25) join the live shard; no point is copied."""
        assert self._ref is not None
        if self.vector in (self.sparse_vector, ""):
            raise ValueError(
                f"{self.vector!r} can't name a dense vector beside {self.sparse_vector!r}"
            )
        ops = [qe.UpdateOperation.create_dense_vector(self.vector, info.dim, qe.Distance.Cosine)]
        if info.sparse:
            ops.append(qe.UpdateOperation.create_sparse_vector(self.sparse_vector, qe.Modifier.Idf))
        for op in ops:  # both are no-ops for a name the shard already has
            self.shard.update(op)
        self._ref.bindings.vectors[self.vector] = info
        self._ref.bindings.write(self.path)

    # --- writes ------------------------------------------------------------------------
    def _payload(self, p: PointWrite) -> dict[str, Any]:
        payload = p.payload()
        if not self.tracked:
            for k in BOOKKEEPING:
                payload.pop(k, None)
        return payload

    def _vectors(self, p: PointWrite) -> dict[str, Any]:
        vec: dict[str, Any] = {}
        if p.dense is not None:
            vec[self.vector] = np.asarray(p.dense, dtype=np.float32).tolist()
        info = self.info()
        if p.sparse is not None and info and info.sparse:
            vec[self.sparse_vector] = qe.SparseVector(p.sparse.indices, p.sparse.values)
        return vec

    def _point(self, p: PointWrite) -> qe.Point:
        return qe.Point(point_id(p.doc_id), self._vectors(p), self._payload(p))

    @staticmethod
    def _same_text(sha: str, pid: str | None = None) -> qe.Filter:
        must: list[Any] = [qe.FieldCondition("text_sha256", match=qe.MatchValue(sha))]
        if pid is not None:
            must.append(qe.HasIdCondition({pid}))
        return qe.Filter(must=must)

    def upsert(self, points: Sequence[PointWrite]) -> None:
        check_fingerprints(self.info(), points)
        self._open.doc_ids.remember((point_id(p.doc_id), p.doc_id) for p in points)
        plain = [p for p in points if p.if_text_sha256 is None]
        if self.in_place or not self.tracked:
            self._upsert_vectors(plain)
        elif plain:
            self.shard.update(qe.UpdateOperation.upsert_points([self._point(p) for p in plain]))
        for p in points:  # re-embeds: vectors only, a payload read earlier never written back
            if p.if_text_sha256 is not None:
                self._update_if_same_text(p, p.if_text_sha256)

    def _upsert_vectors(self, plain: Sequence[PointWrite]) -> None:
        """In a shared shard a point holds other indexes' vectors: write this index's vectors
        and the document's payload, never the point whole (an upsert would drop the others).
        A seed (no dense vector, same text) adds the BM25 vector alone; a new text without a
        vector of it removes this index's stale one."""
        have = {
            d: pl.get("text_sha256")
            for d, pl in self._raw(self._retrieve([p.doc_id for p in plain], ["text_sha256"]))
        }
        ops: list[Any] = []
        fresh = [self._point(p) for p in plain if p.doc_id not in have]
        if fresh:
            ops.append(qe.UpdateOperation.upsert_points(fresh))
        vectors = []
        for p in plain:
            if p.doc_id not in have:
                continue
            pid = point_id(p.doc_id)
            if not (p.dense is None and have[p.doc_id] == p.text_sha256):  # not a seed
                ops.append(qe.UpdateOperation.set_payload([pid], self._payload(p)))
                if p.dense is None:
                    ops.append(qe.UpdateOperation.delete_vectors([pid], [self.vector]))
            if vec := self._vectors(p):
                vectors.append(qe.PointVectors(pid, vec))
        if vectors:
            ops.append(qe.UpdateOperation.update_vectors(vectors))
        for op in ops:
            self.shard.update(op)

    def _update_if_same_text(self, p: PointWrite, sha: str) -> None:
        pid = point_id(p.doc_id)
        try:
            self.shard.update(
                qe.UpdateOperation.update_vectors(
                    [qe.PointVectors(pid, self._vectors(p))], condition=self._same_text(sha)
                )
            )
        except Exception as e:
            if "No point with id" in str(e):
                return  # deleted while it was embedded: nothing to write
            raise
        if self.tracked and p.dense is not None:
            self.shard.update(
                qe.UpdateOperation.set_payload_by_filter(self._same_text(sha, pid), p.bookkeeping())
            )

    def why_no_text(self, doc_id: str) -> str:
        return "no stored text"

    def delete(self, doc_ids: Sequence[str]) -> None:
        self.shard.update(qe.UpdateOperation.delete_points([point_id(d) for d in doc_ids]))

    def flush(self) -> None:
        self.shard.flush()

    def _named(self, points: list[qe.ScoredPoint]) -> list[tuple[str, float]]:
        """(doc id, score) per hit, from the shard's remembered doc ids (proxy/store/doc_ids.py):
        no hit pays for a payload read, except once where a shard predates them."""
        ids = [str(p.id) for p in points]
        doc_of = self._open.doc_ids.lookup(ids)
        unknown = [i for i in ids if i not in doc_of]
        if unknown:
            read = [
                (str(r.id), r.payload["doc_id"])
                for r in self.shard.retrieve(unknown, ["doc_id"], False)
                if r.payload
            ]
            self._open.doc_ids.remember(read)
            doc_of.update(read)
        return [
            (doc_of[i], float(p.score)) for i, p in zip(ids, points, strict=True) if i in doc_of
        ]

    def search_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]:
        q = qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=self.vector)
        req = qe.QueryRequest(limit=limit, query=q, filter=to_edge_filter(flt), with_payload=False)
        return self._named(self.shard.query(req))

    def query_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None, fields: Sequence[str]
    ) -> list[tuple[dict[str, Any], float]]:
        q = qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=self.vector)
        req = qe.QueryRequest(
            limit=limit, query=q, filter=to_edge_filter(flt), with_payload=["doc_id", *fields]
        )
        hits = [(p.payload, float(p.score)) for p in self.shard.query(req) if p.payload]
        if not self.tracked and set(fields) & set(BOOKKEEPING):
            self._bookkeeping([pl for pl, _ in hits], all_hold=True)
        return hits

    def search_sparse(
        self, sparse: Sparse, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]:
        if not sparse.indices:
            return []
        q = qe.Query.Nearest(
            qe.SparseVector(sparse.indices, sparse.values), using=self.sparse_vector
        )
        req = qe.QueryRequest(limit=limit, query=q, filter=to_edge_filter(flt), with_payload=False)
        return self._named(self.shard.query(req))

    def _holding(self, doc_ids: Sequence[str], vector: str) -> set[str]:
        if not doc_ids:
            return set()
        # Point ids back to doc ids here, not from the payload: reading it costs more than the
        # whole check (this runs on ~150 candidates of every fused query).
        by_point = {point_id(d): d for d in doc_ids}
        flt = qe.Filter(must=[qe.HasIdCondition(set(by_point)), qe.HasVectorCondition(vector)])
        recs, _ = self.shard.scroll(
            qe.ScrollRequest(limit=len(by_point), filter=flt, with_payload=False)
        )
        return {by_point[str(r.id)] for r in recs}

    def with_dense(self, doc_ids: Sequence[str]) -> set[str]:
        return self._holding(doc_ids, self.vector)

    def seeded(self, doc_ids: Sequence[str]) -> set[str]:
        """In place: the ids already seeded (holding the BM25 vector)."""
        return self._holding(doc_ids, self.sparse_vector)

    def _dense_of(self, recs: list[qe.Record], doc_of: dict[str, str]) -> dict[str, np.ndarray]:
        out = {}
        for r in recs:
            v = r.vector.get(self.vector) if isinstance(r.vector, dict) else r.vector
            doc = doc_of.get(str(r.id)) or (r.payload or {}).get("doc_id")
            if v is not None and doc is not None:
                out[doc] = np.asarray(v, dtype=np.float32)
        return out

    def dense_vectors(self, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not doc_ids:
            return {}
        by_point = {point_id(d): d for d in doc_ids}
        return self._dense_of(self.shard.retrieve(list(by_point), False, [self.vector]), by_point)

    def dense_sample(self, limit: int) -> dict[str, np.ndarray]:
        flt = qe.Filter(must=[qe.HasVectorCondition(self.vector)])
        recs, _ = self.shard.scroll(
            qe.ScrollRequest(
                limit=limit, filter=flt, with_payload=["doc_id"], with_vector=[self.vector]
            )
        )
        return self._dense_of(recs, {})

    def _bookkeeping(self, payloads: list[dict[str, Any]], all_hold: bool = False) -> None:
        """An index added in place keeps no bookkeeping in the points (the payload's belongs
        to the shard's first vector): what it would say follows from the binding, since every
        write keeps this vector of the current text."""
        info = self.info()
        hold = (
            {pl["doc_id"] for pl in payloads}
            if all_hold
            else self.with_dense([pl["doc_id"] for pl in payloads])
        )
        for pl in payloads:
            for k in BOOKKEEPING:
                pl.pop(k, None)
            if info is not None and pl["doc_id"] in hold:
                pl["model_fingerprint"] = info.fingerprint
                if "text_sha256" in pl:
                    pl["vector_sha256"] = pl["text_sha256"]

    def _select(self, fields: Sequence[str] | None) -> Any:
        if fields is None:
            return True
        sel = [*fields, "doc_id"]
        if not self.tracked and "vector_sha256" in fields:
            sel.append("text_sha256")  # what an in-place vector's hash is derived from
        return sel

    def _view(self, recs: list[qe.Record], fields: Sequence[str] | None) -> list[dict[str, Any]]:
        payloads = [r.payload for r in recs if r.payload]
        if not self.tracked and (fields is None or set(fields) & set(BOOKKEEPING)):
            self._bookkeeping(payloads)
        return payloads

    def _retrieve(self, doc_ids: Sequence[str], fields: Sequence[str] | None) -> list[qe.Record]:
        if not doc_ids:
            return []
        return list(
            self.shard.retrieve([point_id(d) for d in doc_ids], self._select(fields), False)
        )

    @staticmethod
    def _raw(recs: list[qe.Record]) -> list[tuple[str, dict[str, Any]]]:
        return [(r.payload["doc_id"], r.payload) for r in recs if r.payload]

    def retrieve(
        self, doc_ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        return {p["doc_id"]: p for p in self._view(self._retrieve(doc_ids, fields), fields)}

    def scroll(
        self, batch: int = 256, fields: Sequence[str] | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        offset = None
        while True:
            recs, offset = self.shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=self._select(fields))
            )
            if recs:
                yield self._view(recs, fields)
            if offset is None:
                return

    def count(self, dense_only: bool = False) -> int:
        if self.info() is None:
            return 0
        flt = qe.Filter(must=[qe.HasVectorCondition(self.vector)]) if dense_only else None
        return int(self.shard.count(qe.CountRequest(exact=True, filter=flt)))

    def without_dense(self, limit: int) -> list[str]:
        flt = qe.Filter(must_not=[qe.HasVectorCondition(self.vector)])
        recs, _ = self.shard.scroll(
            qe.ScrollRequest(limit=limit, filter=flt, with_payload=["doc_id"])
        )
        return [r.payload["doc_id"] for r in recs if r.payload]

    def has_payload_field(self, field: str) -> bool:
        if self._ref is None:
            return False
        flt = qe.Filter(must_not=[qe.IsEmptyCondition(field)])
        recs, _ = self.shard.scroll(qe.ScrollRequest(limit=1, filter=flt, with_payload=False))
        return bool(recs)

    def fingerprints(self) -> dict[str, int]:
        info = self.info()
        if info is None:
            return {}
        if not self.tracked:
            n = self.count(dense_only=True)
            return {info.fingerprint: n} if n else {}
        has = qe.Filter(must=[qe.HasVectorCondition(self.vector)])
        res = self.shard.facet(
            qe.FacetRequest("model_fingerprint", limit=1000, exact=True, filter=has)
        )
        facets = {str(h.value): int(h.count) for h in res.hits}
        return fingerprint_counts(facets, self.count(dense_only=True))

    # --- lifecycle ---------------------------------------------------------------------
    def drop(self) -> None:
        """Delete the index: its shard, or in a shared shard its vector (`delete_vector_name`,
        the BM25 vector too if no other index reads it) and its bookkeeping."""
        info = self.info()
        if self._ref is not None and info is None:
            return  # a view not created yet: the shard holds only other indexes' vectors
        if self._ref is None or info is None or not self.in_place:
            self.close()
            shutil.rmtree(self.path, ignore_errors=True)
            return
        bindings = self._ref.bindings
        ops = [qe.UpdateOperation.delete_vector_name(self.vector)]
        others = [v for k, v in bindings.vectors.items() if k != self.vector]
        if info.sparse and not any(v.sparse for v in others):
            ops.append(qe.UpdateOperation.delete_vector_name(self.sparse_vector))
        if self.tracked:
            ops.append(qe.UpdateOperation.delete_payload_by_filter(qe.Filter(), list(BOOKKEEPING)))
            bindings.tracked = None
        for op in ops:
            self.shard.update(op)
        self.shard.flush()
        del bindings.vectors[self.vector]
        bindings.write(self.path)

    def page(
        self, flt: Filter | FilterTree | None, limit: int, start: str | None, fields: Sequence[str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        if self._ref is None:
            return [], None
        offset = point_id(start) if start is not None else None
        recs, _ = self.shard.scroll(
            qe.ScrollRequest(
                offset=offset,
                limit=limit + 1,
                filter=to_edge_filter(flt),
                with_payload=["doc_id", *fields],
            )
        )
        views = [r.payload for r in recs if r.payload]
        return views[:limit], views[limit]["doc_id"] if len(views) > limit else None

    def count_matching(self, flt: Filter | FilterTree | None) -> int:
        if self._ref is None:
            return 0
        return int(self.shard.count(qe.CountRequest(exact=True, filter=to_edge_filter(flt))))

    def close(self) -> None:
        if self._ref is not None:
            _release(self._ref)
            self._ref = None
