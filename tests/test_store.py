"""The VectorStore contract, run against both engines: qdrant-edge (embedded, on disk) and
qdrant-client's local mode (the server adapter's API without a server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proxy.config import IndexConfig
from proxy.document import text_sha256
from proxy.filters import Filter
from proxy.sparse import Bm25Encoder
from proxy.store import FingerprintMismatch, IndexInfo, PointWrite, VectorStore, point_id
from proxy.store.edge import EdgeStore
from proxy.store.server import ServerStore

DIM = 16
FP = "model-a@000000000001"
FP_OLD = "model-z@000000000000"
INFO = IndexInfo(dim=DIM, fingerprint=FP, sparse=True)
TEXTS = {
    "d0": "Qdrant stores dense vectors for semantic search",
    "d1": "BM25 ranks documents by keyword frequency and rarity",
    "d2": "Reciprocal rank fusion merges several ranked lists",
    "d3": "The quick brown fox jumps over the lazy dog",
    "d4": "Embedding models map text into vector spaces",
}
bm25 = Bm25Encoder(avg_len=8)


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def write(doc_id: str, text: str, dense: bool = True, **kw: object) -> PointWrite:
    n = int(doc_id[1:])
    return PointWrite(
        doc_id=doc_id,
        text=text,
        text_sha256=text_sha256(text),
        metadata={"n": n, "parity": "even" if n % 2 == 0 else "odd"},
        dense=vec(n) if dense else None,
        fingerprint=FP if dense else None,
        sparse=bm25.document(text),
        embedded_at="2026-01-01T00:00:00Z" if dense else None,
        **kw,  # type: ignore[arg-type]
    )


def old_index(path: Path) -> EdgeStore:
    """An edge index of another model holding every document: what `--in-place` starts from."""
    old = EdgeStore("old", path, IndexConfig(backend="edge", path="x"))
    old.create(IndexInfo(dim=DIM, fingerprint=FP_OLD, sparse=False))
    points = [write(d, t) for d, t in TEXTS.items()]
    for p in points:
        p.fingerprint, p.dense, p.sparse = FP_OLD, vec(100 + int(p.doc_id[1:])), None
    old.upsert(points)
    return old


@pytest.fixture(params=["edge", "edge-in-place", "qdrant-local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    old = None
    if request.param == "edge":
        s: VectorStore = EdgeStore("t", tmp_path / "shard", IndexConfig(backend="edge", path="x"))
    elif request.param == "edge-in-place":  # a second vector of the old index's shard
        old = old_index(tmp_path / "shard")
        cfg = IndexConfig(backend="edge", path="x", vector="v2")
        s = EdgeStore("t", tmp_path / "shard", cfg, primary="dense")
    else:
        s = ServerStore("t", IndexConfig(backend="qdrant", url=":memory:", collection="t"))
    s.create(INFO)
    # d0..d2 migrated (dense + sparse); d3, d4 seeded only (sparse, no dense vector)
    s.upsert([write(d, t, dense=d in ("d0", "d1", "d2")) for d, t in TEXTS.items()])
    yield s
    s.close()
    if old is not None:
        old.close()


def test_counts_and_dense_membership(store: VectorStore) -> None:
    assert store.count() == 5
    assert store.count(dense_only=True) == 3
    assert store.with_dense(["d0", "d3", "d4", "d2", "missing"]) == {"d0", "d2"}


def test_dense_search_finds_the_exact_vector_first(store: VectorStore) -> None:
    hits = store.search_dense(vec(1), limit=3)
    assert hits[0][0] == "d1" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert {d for d, _ in hits} <= {"d0", "d1", "d2"}  # seeded docs have no dense vector


def test_sparse_search_covers_seeded_docs(store: VectorStore) -> None:
    hits = store.search_sparse(bm25.query("lazy fox"), limit=3)
    assert hits[0][0] == "d3"
    assert store.search_sparse(bm25.query("the and of"), limit=3) == []  # stopwords only


def test_filter_on_metadata(store: VectorStore) -> None:
    flt = Filter.model_validate({"must": [{"key": "parity", "match": {"value": "odd"}}]})
    hits = store.search_dense(vec(0), limit=5, flt=flt)
    assert {d for d, _ in hits} == {"d1"}
    flt = Filter.model_validate({"must": [{"key": "n", "range": {"gte": 3}}]})
    assert {d for d, _ in store.search_sparse(bm25.query("vector fox"), 5, flt)} <= {"d3", "d4"}


def test_retrieve_and_scroll(store: VectorStore) -> None:
    got = store.retrieve(["d3", "d0", "nope"], ["text", "metadata"])
    assert set(got) == {"d0", "d3"}
    assert got["d3"]["text"] == TEXTS["d3"] and got["d3"]["metadata"]["n"] == 3
    full = store.retrieve(["d0"])["d0"]
    assert full["model_fingerprint"] == FP and full["vector_sha256"] == full["text_sha256"]
    assert "model_fingerprint" not in store.retrieve(["d4"])["d4"]
    seen = [p["doc_id"] for batch in store.scroll(batch=2, fields=["text_sha256"]) for p in batch]
    assert sorted(seen) == sorted(TEXTS)


def test_conditional_write_skips_a_changed_text(store: VectorStore) -> None:
    stale = write("d3", TEXTS["d3"], if_text_sha256=text_sha256("an older text"))
    store.upsert([stale])
    assert store.with_dense(["d3"]) == set()
    fresh = write("d3", TEXTS["d3"], if_text_sha256=text_sha256(TEXTS["d3"]))
    store.upsert([fresh])
    assert store.with_dense(["d3"]) == {"d3"}
    # A conditional write never resurrects a deleted document.
    store.delete(["d4"])
    store.upsert([write("d4", TEXTS["d4"], if_text_sha256=text_sha256(TEXTS["d4"]))])
    assert store.retrieve(["d4"]) == {}


def test_bilingual_write_is_refused(store: VectorStore) -> None:
    bad = write("d4", TEXTS["d4"])
    bad.fingerprint = "model-b@999999999999"
    with pytest.raises(FingerprintMismatch, match="bound to"):
        store.upsert([bad])
    assert store.count(dense_only=True) == 3
    wrong_dim = write("d4", TEXTS["d4"])
    wrong_dim.dense = np.ones(DIM + 1, dtype=np.float32)
    with pytest.raises(FingerprintMismatch):
        store.upsert([wrong_dim])
    assert store.with_dense(["d4"]) == set()


def test_delete_and_drop(store: VectorStore) -> None:
    store.delete(["d0", "d3"])
    assert store.count() == 3
    store.drop()
    assert store.info() is None and store.count() == 0


def test_edge_index_survives_reopen(tmp_path: Path) -> None:
    cfg = IndexConfig(backend="edge", path="x")
    s = EdgeStore("t", tmp_path / "shard", cfg)
    s.create(INFO)
    s.upsert([write(d, t) for d, t in TEXTS.items()])
    s.close()
    again = EdgeStore("t", tmp_path / "shard", cfg)
    assert again.info() == INFO and again.count() == 5
    with pytest.raises(RuntimeError, match="bound to"):
        again.create(IndexInfo(dim=DIM, fingerprint="other@1", sparse=True))
    again.close()


def test_sweep_and_fingerprint_counts(store: VectorStore) -> None:
    assert sorted(store.without_dense(10)) == ["d3", "d4"]
    assert store.without_dense(1)[0] in {"d3", "d4"}
    assert store.fingerprints() == {FP: 3}


def test_server_backend_mirrors_the_serving_pointer_to_an_alias(
    tmp_path: Path, models: dict
) -> None:
    """Old and new collections on one Qdrant (local mode here): cutover and rollback move the
    `<new>_serving` alias in one request."""
    import asyncio

    from proxy.config import Mode, load_settings
    from proxy.migration.control import ControlPlane
    from proxy.routing import Routing
    from proxy.runtime import Runtime
    from tests.helpers import ROOT

    settings = load_settings(
        ROOT / "config" / "demo.yaml",
        data_dir=str(tmp_path),
        indexes={
            "old": {"backend": "qdrant", "url": ":memory:", "collection": "docs_v1"},
            "new": {"backend": "qdrant", "url": ":memory:", "collection": "docs_v2"},
        },
    )
    rt = Runtime(settings, dict(models))
    for side in ("old", "new"):
        rt.store(side).create(IndexInfo(dim=DIM, fingerprint=f"{side}@1", sparse=side == "new"))
    plane = ControlPlane(rt)
    new = rt.store("new")
    asyncio.run(plane.switch(Routing(mode=Mode.OLD), "set mode", "test"))
    assert new.alias_target("docs_v2_serving") == "docs_v1"  # type: ignore[attr-defined]
    asyncio.run(plane.cutover(rt.searcher(), None, True, "test"))
    assert new.alias_target("docs_v2_serving") == "docs_v2"  # type: ignore[attr-defined]
    asyncio.run(plane.rollback("test"))
    assert new.alias_target("docs_v2_serving") == "docs_v1"  # type: ignore[attr-defined]
    rt.close()


def test_edge_in_place_writes_touch_only_their_own_vector(tmp_path: Path) -> None:
    """The new model's vector in the old index's shard: seeds and re-embeds leave the old
    vector and every payload as they were; a dual write updates both vectors of its point;
    dropping the old vector leaves the new index whole."""
    old = old_index(tmp_path / "shard")
    view = EdgeStore("new", tmp_path / "shard", IndexConfig(backend="edge", path="x", vector="v2"))
    ids = [point_id(d) for d in TEXTS]

    def old_side() -> dict[str, Any]:
        recs = old.shard.retrieve(ids, True, ["dense"])
        return {str(r.id): (r.payload, (r.vector or {}).get("dense")) for r in recs}

    before = old_side()
    view.create(INFO)
    view.upsert([write(d, t, dense=False) for d, t in TEXTS.items()])  # seeds: BM25 only
    view.upsert([write(d, t, if_text_sha256=text_sha256(t)) for d, t in TEXTS.items()])
    assert old_side() == before
    assert view.count() == 5 and view.count(dense_only=True) == 5
    assert old.fingerprints() == {FP_OLD: 5} and view.fingerprints() == {FP: 5}

    # A re-embed of the old vector (it carries the per-point bookkeeping) keeps the new one.
    redo = write("d2", TEXTS["d2"], if_text_sha256=text_sha256(TEXTS["d2"]))
    redo.fingerprint, redo.dense, redo.sparse, redo.embedded_at = FP_OLD, vec(300), None, "t2"
    old.upsert([redo])
    got = old.shard.retrieve([point_id("d2")], True, True)[0]
    assert got.payload["embedded_at"] == "t2" and set(got.vector) == {"dense", "v2", "bm25"}

    # A dual write, old side then new side: both vectors of the new text, and its payload.
    edited = write("d1", "an edited text about fusion")
    edited.fingerprint, edited.dense, edited.sparse = FP_OLD, vec(201), None
    old.upsert([edited])
    view.upsert([write("d1", "an edited text about fusion")])
    got = old.shard.retrieve([point_id("d1")], True, True)[0]
    assert got.payload["text"] == "an edited text about fusion" and set(got.vector) == {
        "dense",
        "v2",
        "bm25",
    }
    assert got.payload["model_fingerprint"] == FP_OLD  # the bookkeeping stays the old vector's
    assert view.retrieve(["d1"])["d1"]["model_fingerprint"] == FP

    old.drop()  # finish --drop: the old vector and its bookkeeping leave the shard
    assert old.info() is None and view.count(dense_only=True) == 5
    recs = view.shard.retrieve(ids, True, True)
    assert all("model_fingerprint" not in r.payload and "dense" not in r.vector for r in recs)
    assert view.search_dense(vec(0), 1)[0][0] == "d0"
    old.close()
    view.close()
    again = EdgeStore("new", tmp_path / "shard", IndexConfig(backend="edge", path="x", vector="v2"))
    assert again.info() == INFO and again.count() == 5 and not again.in_place
    again.close()
