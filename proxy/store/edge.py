"""Embedded adapter: one qdrant-edge shard per index, in this process.

Edge has no collection metadata and no aliases, so what the index is bound to (model
fingerprint, dimension) lives in `crossfade_index.json` beside the shard, written atomically.
Calls block; the query path runs them in worker threads. `optimize()` (HNSW build) is never
called here: it holds the GIL for its whole run and belongs to a scheduled job.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from proxy.config import IndexConfig
from proxy.filters import Condition, Filter
from proxy.store import (
    IndexInfo,
    PointWrite,
    Sparse,
    check_fingerprints,
    fingerprint_counts,
    point_id,
    write_json_atomic,
)

META_FILE = "crossfade_index.json"


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


def to_edge_filter(flt: Filter | None) -> qe.Filter | None:
    if flt is None:
        return None
    return qe.Filter(
        must=[_condition(c) for c in flt.must] or None,
        should=[_condition(c) for c in flt.should] or None,
        must_not=[_condition(c) for c in flt.must_not] or None,
    )


# Point id -> doc id, shared by every index (the same doc id gives the same point id).
DOC_OF: dict[str, str] = {}
DOC_OF_MAX = 1 << 21


class EdgeStore:
    def __init__(self, name: str, path: Path, cfg: IndexConfig) -> None:
        self.name = name
        self.path = path
        self.vector = cfg.vector
        self.sparse_vector = cfg.sparse_vector
        self._info: IndexInfo | None = None
        self._shard: qe.EdgeShard | None = None
        meta = path / META_FILE
        if meta.exists():
            self._info = IndexInfo(**json.loads(meta.read_text()))
            try:
                self._shard = qe.EdgeShard.load(str(path))
            except Exception as e:
                if "WouldBlock" in str(e):
                    raise RuntimeError(
                        f"the {name} index at {path} is open in another process (a running "
                        "`crossfade serve`?): use the proxy's HTTP API, or stop it first"
                    ) from e
                raise

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError(f"index {self.name!r} at {self.path} does not exist yet")
        return self._shard

    def info(self) -> IndexInfo | None:
        return self._info

    def create(self, info: IndexInfo) -> None:
        if self._info is not None:
            if self._info != info:
                raise RuntimeError(f"index {self.name!r} exists, bound to {self._info}")
            return
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
        self._shard = qe.EdgeShard.create(str(self.path), config)
        # Payload indexes keep counts and conditional writes cheap at scale.
        for fld in ("doc_id", "text_sha256", "model_fingerprint"):
            self._shard.update(
                qe.UpdateOperation.create_field_index(fld, qe.PayloadSchemaType.Keyword)
            )
        write_json_atomic(self.path / META_FILE, info.__dict__)
        self._info = info

    def _point(self, p: PointWrite) -> qe.Point:
        vec: dict[str, Any] = {}
        if p.dense is not None:
            vec[self.vector] = np.asarray(p.dense, dtype=np.float32).tolist()
        if p.sparse is not None and self._info and self._info.sparse:
            vec[self.sparse_vector] = qe.SparseVector(p.sparse.indices, p.sparse.values)
        return qe.Point(point_id(p.doc_id), vec, p.payload())

    def upsert(self, points: Sequence[PointWrite]) -> None:
        check_fingerprints(self._info, points)
        plain = [p for p in points if p.if_text_sha256 is None]
        if plain:
            self.shard.update(qe.UpdateOperation.upsert_points([self._point(p) for p in plain]))
        for p in points:
            if p.if_text_sha256 is not None:
                cond = qe.Filter(
                    must=[qe.FieldCondition("text_sha256", match=qe.MatchValue(p.if_text_sha256))]
                )
                self.shard.update(
                    qe.UpdateOperation.upsert_points(
                        [self._point(p)], condition=cond, update_mode=qe.UpdateMode.UpdateOnly
                    )
                )

    def delete(self, doc_ids: Sequence[str]) -> None:
        self.shard.update(qe.UpdateOperation.delete_points([point_id(d) for d in doc_ids]))

    def flush(self) -> None:
        self.shard.flush()

    def _named(self, points: list[qe.ScoredPoint]) -> list[tuple[str, float]]:
        """(doc id, score) per hit. A point id is uuid5 of its doc id, a mapping that never
        changes: ids not seen yet are read once, and no hit pays for a payload read (which
        costs more than a search over a few thousand vectors)."""
        ids = [str(p.id) for p in points]
        unknown = [i for i in ids if i not in DOC_OF]
        if unknown:
            if len(DOC_OF) > DOC_OF_MAX:
                DOC_OF.clear()
            for r in self.shard.retrieve(unknown, ["doc_id"], False):
                if r.payload:
                    DOC_OF[str(r.id)] = r.payload["doc_id"]
        return [
            (DOC_OF[i], float(p.score)) for i, p in zip(ids, points, strict=True) if i in DOC_OF
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
        return [(p.payload, float(p.score)) for p in self.shard.query(req) if p.payload]

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

    def with_dense(self, doc_ids: Sequence[str]) -> set[str]:
        if not doc_ids:
            return set()
        flt = qe.Filter(
            must=[
                qe.HasIdCondition({point_id(d) for d in doc_ids}),
                qe.HasVectorCondition(self.vector),
            ]
        )
        recs, _ = self.shard.scroll(
            qe.ScrollRequest(limit=len(doc_ids), filter=flt, with_payload=["doc_id"])
        )
        return {r.payload["doc_id"] for r in recs if r.payload}

    def retrieve(
        self, doc_ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        if not doc_ids:
            return {}
        sel = list(fields) + ["doc_id"] if fields is not None else True
        recs = self.shard.retrieve([point_id(d) for d in doc_ids], sel, False)
        return {r.payload["doc_id"]: r.payload for r in recs if r.payload}

    def scroll(
        self, batch: int = 256, fields: Sequence[str] | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        sel = list(fields) + ["doc_id"] if fields is not None else True
        offset = None
        while True:
            recs, offset = self.shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=sel)
            )
            if recs:
                yield [r.payload for r in recs if r.payload]
            if offset is None:
                return

    def count(self, dense_only: bool = False) -> int:
        if self._shard is None:
            return 0
        flt = qe.Filter(must=[qe.HasVectorCondition(self.vector)]) if dense_only else None
        return int(self.shard.count(qe.CountRequest(exact=True, filter=flt)))

    def drop(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._info = None

    def without_dense(self, limit: int) -> list[str]:
        flt = qe.Filter(must_not=[qe.HasVectorCondition(self.vector)])
        recs, _ = self.shard.scroll(
            qe.ScrollRequest(limit=limit, filter=flt, with_payload=["doc_id"])
        )
        return [r.payload["doc_id"] for r in recs if r.payload]

    def has_payload_field(self, field: str) -> bool:
        if self._shard is None:
            return False
        flt = qe.Filter(must_not=[qe.IsEmptyCondition(field)])
        recs, _ = self.shard.scroll(qe.ScrollRequest(limit=1, filter=flt, with_payload=False))
        return bool(recs)

    def fingerprints(self) -> dict[str, int]:
        if self._shard is None:
            return {}
        has = qe.Filter(must=[qe.HasVectorCondition(self.vector)])
        res = self.shard.facet(
            qe.FacetRequest("model_fingerprint", limit=1000, exact=True, filter=has)
        )
        facets = {str(h.value): int(h.count) for h in res.hits}
        return fingerprint_counts(facets, self.count(dense_only=True))

    def close(self) -> None:
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None
