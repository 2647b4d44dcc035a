"""The VectorStore contract, run against every backend: qdrant-edge (embedded, on disk; and a
second vector of a shard, in place), qdrant-client's local mode (the server adapter's API
without a server), and Chroma, both a real `chroma run` server and chromadb's embedded
PersistentClient (BM25 in its sidecar, an edge shard beside the collection). A check of a
capability a backend declares it lacks (`sparse`: BM25) is skipped on that declaration, never
on the backend's name."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proxy.config import IndexConfig
from proxy.document import text_sha256
from proxy.filters import Condition, Filter, FilterTree, HasId, IsEmpty
from proxy.sparse import Bm25Encoder
from proxy.store import (
    FingerprintMismatch,
    IndexInfo,
    IndexUnavailable,
    PointWrite,
    VectorStore,
    point_id,
)
from proxy.store.chroma import ChromaStore, UnsupportedFilter, to_chroma_where
from proxy.store.doc_ids import FILE as DOC_IDS
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
        metadata={"n": n, "parity": "even" if n % 2 == 0 else "odd", "tags": ["all", f"n{n}"]},
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


def chroma_config(url: str) -> IndexConfig:
    """A collection of its own: the session's Chroma server is shared by every test."""
    return IndexConfig(backend="chroma", url=url, collection=f"t{uuid.uuid4().hex}")


@pytest.fixture(params=["edge", "edge-in-place", "qdrant-local", "chroma", "chroma-local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    old = None
    if request.param == "chroma":  # a real `chroma run` server
        url = request.getfixturevalue("chroma_server").url
        s: VectorStore = ChromaStore("t", chroma_config(url), tmp_path / "bm25")
    elif request.param == "chroma-local":  # chromadb's embedded PersistentClient
        s = ChromaStore("t", chroma_config(f"local:{tmp_path / 'chroma'}"), tmp_path / "bm25")
    elif request.param == "edge":
        s = EdgeStore("t", tmp_path / "shard", IndexConfig(backend="edge", path="x"))
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
    if isinstance(s, ChromaStore):
        s.drop()  # the server outlives the test
    s.close()
    if old is not None:
        old.close()


def ids(store: VectorStore, flt: Filter | FilterTree | None) -> set[str]:
    views, nxt = store.page(flt, 10, None, ())
    assert nxt is None
    return {v["doc_id"] for v in views}


def cond(key: str, **kw: object) -> Condition:
    return Condition.model_validate({"key": key, **kw})


def test_counts_and_dense_membership(store: VectorStore) -> None:
    assert store.count() == 5
    assert store.count(dense_only=True) == 3
    assert store.with_dense(["d0", "d3", "d4", "d2", "missing"]) == {"d0", "d2"}


def test_dense_search_finds_the_exact_vector_first(store: VectorStore) -> None:
    hits = store.search_dense(vec(1), limit=3)
    assert hits[0][0] == "d1" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert {d for d, _ in hits} <= {"d0", "d1", "d2"}  # seeded docs have no dense vector


def test_sparse_search_covers_seeded_docs(store: VectorStore) -> None:
    if not store.sparse:
        with pytest.raises(NotImplementedError, match="BM25"):
            store.search_sparse(bm25.query("lazy fox"), limit=3)
        pytest.skip("the backend declares no BM25 (sparse: false), and search_sparse says so")
    hits = store.search_sparse(bm25.query("lazy fox"), limit=3)
    assert hits[0][0] == "d3"
    assert store.search_sparse(bm25.query("the and of"), limit=3) == []  # stopwords only


def test_filter_on_metadata(store: VectorStore) -> None:
    flt = Filter.model_validate({"must": [{"key": "parity", "match": {"value": "odd"}}]})
    hits = store.search_dense(vec(0), limit=5, flt=flt)
    assert {d for d, _ in hits} == {"d1"}
    flt = Filter.model_validate({"must": [{"key": "n", "range": {"gte": 3}}]})
    if store.sparse:
        assert {d for d, _ in store.search_sparse(bm25.query("vector fox"), 5, flt)} <= {"d3", "d4"}


def test_writes_and_deletes_move_bm25(store: VectorStore) -> None:
    """BM25 follows every write through the store: a new text, a new document, a delete."""
    if not store.sparse:
        pytest.skip("the backend declares no BM25 (sparse: false)")
    assert [d for d, _ in store.search_sparse(bm25.query("fox"), 5)] == ["d3"]
    store.upsert([write("d3", "A slow green turtle", dense=False)])  # d3's text changes
    assert store.search_sparse(bm25.query("fox"), 5) == []
    assert [d for d, _ in store.search_sparse(bm25.query("turtle"), 5)] == ["d3"]
    store.upsert([write("d5", "A fox and a turtle")])  # a new document
    assert {d for d, _ in store.search_sparse(bm25.query("turtle fox"), 5)} == {"d3", "d5"}
    store.delete(["d3"])
    assert [d for d, _ in store.search_sparse(bm25.query("turtle"), 5)] == ["d5"]
    # a re-embed (same text) keeps the BM25 vector
    store.upsert([write("d4", TEXTS["d4"], if_text_sha256=text_sha256(TEXTS["d4"]))])
    assert [d for d, _ in store.search_sparse(bm25.query("embedding"), 5)] == ["d4"]


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


def test_edge_names_hits_from_its_doc_id_map(tmp_path: Path) -> None:
    """Hits are named from the point id -> doc id map every upsert fills, not from their
    payloads; a shard written before the map existed names its hits from their payloads once,
    then from the map."""
    from proxy.store.doc_ids import FILE, DocIds

    cfg = IndexConfig(backend="edge", path="x")
    s = EdgeStore("t", tmp_path / "shard", cfg)
    s.create(INFO)
    s.upsert([write(d, t) for d, t in TEXTS.items()])
    s.close()
    ids = DocIds(tmp_path / "shard")
    assert ids.lookup([point_id(d) for d in TEXTS]) == {point_id(d): d for d in TEXTS}
    ids.close()
    (tmp_path / "shard" / FILE).unlink()  # as a shard written before the map
    again = EdgeStore("t", tmp_path / "shard", cfg)
    assert [d for d, _ in again.search_dense(vec(3), 1)] == ["d3"]
    assert {d for d, _ in again.search_dense(vec(0), 5)} == set(TEXTS)
    again.close()
    ids = DocIds(tmp_path / "shard")
    assert ids.lookup([point_id(d) for d in TEXTS]) == {point_id(d): d for d in TEXTS}
    ids.close()


def test_edge_warms_the_files_its_dense_search_reads_within_a_budget(tmp_path: Path) -> None:
    """`warm` (before a proxy serves) reads this index's doc-id map, dense vectors and graph,
    whole or up to its budget, and nothing else of the shard (payloads, BM25)."""
    s = EdgeStore("t", tmp_path / "shard", IndexConfig(backend="edge", path="x"))
    assert s.warm(1 << 30) == 0  # no index yet
    s.create(INFO)
    s.upsert([write(d, t) for d, t in TEXTS.items()])
    s.flush()
    dense = [
        f
        for f in (tmp_path / "shard").rglob("*")
        if f.is_file()
        and (
            {"vector_storage-dense", "vector_index-dense"} & set(f.parts)
            or f.name.startswith(DOC_IDS)
        )
    ]
    size = sum(f.stat().st_size for f in dense)
    shard = sum(f.stat().st_size for f in (tmp_path / "shard").rglob("*") if f.is_file())
    assert 0 < size < shard
    assert s.warm(1 << 30) == size
    assert s.warm(size // 3) == size // 3
    s.close()


def test_sweep_and_fingerprint_counts(store: VectorStore) -> None:
    assert sorted(store.without_dense(10)) == ["d3", "d4"]
    assert store.without_dense(1)[0] in {"d3", "d4"}
    assert store.fingerprints() == {FP: 3}


def test_dense_vectors_and_sample(store: VectorStore) -> None:
    got = store.dense_vectors(["d0", "d3", "missing"])
    assert set(got) == {"d0"} and np.allclose(got["d0"], vec(0), atol=1e-5)
    sample = store.dense_sample(10)
    assert set(sample) == {"d0", "d1", "d2"}  # never a point without a vector
    assert all(np.allclose(v, vec(int(d[1:])), atol=1e-5) for d, v in sample.items())
    assert len(store.dense_sample(2)) == 2


def test_query_dense_returns_the_fields_asked(store: VectorStore) -> None:
    (top, score), *_ = store.query_dense(vec(2), 2, None, ["text", "metadata"])
    assert top["doc_id"] == "d2" and top["text"] == TEXTS["d2"] and top["metadata"]["n"] == 2
    assert score == pytest.approx(1.0, abs=1e-4)
    odd = Filter.model_validate({"must": [{"key": "parity", "match": {"value": "odd"}}]})
    assert [p["doc_id"] for p, _ in store.query_dense(vec(2), 5, odd, ["text"])] == ["d1"]


def test_filters_mean_the_same_on_every_backend(store: VectorStore) -> None:
    """Qdrant's semantics (nested clauses, negation, arrays, emptiness, ids) over page()."""
    odd, even = cond("parity", match={"value": "odd"}), cond("parity", match={"value": "even"})
    n = [cond("n", match={"value": i}) for i in range(5)]
    cases: list[tuple[FilterTree, set[str]]] = [
        (FilterTree(must_not=(odd,)), {"d0", "d2", "d4"}),
        (FilterTree(should=(n[0], n[4])), {"d0", "d4"}),
        (FilterTree(must=(HasId(("d1", "d3", "zz")),)), {"d1", "d3"}),
        (FilterTree(must_not=(HasId(("d0",)),)), {"d1", "d2", "d3", "d4"}),
        (FilterTree(must=(IsEmpty("nope"),)), set(TEXTS)),
        (FilterTree(must=(IsEmpty("parity"),)), set()),
        (FilterTree(must_not=(IsEmpty("parity"),)), set(TEXTS)),
        (FilterTree(must=(cond("parity", match={"except": ["odd"]}),)), {"d0", "d2", "d4"}),
        (FilterTree(must=(cond("nope", match={"except": ["odd"]}),)), set()),
        (FilterTree(must_not=(cond("parity", match={"except": ["odd"]}),)), {"d1", "d3"}),
        (FilterTree(must=(cond("n", range={"gte": 1, "lt": 3}),)), {"d1", "d2"}),
        (FilterTree(must_not=(cond("n", range={"gte": 2}),)), {"d0", "d1"}),
        (FilterTree(must=(cond("tags", match={"value": "n1"}),)), {"d1"}),
        (FilterTree(must=(cond("tags[]", match={"any": ["n1", "n2"]}),)), {"d1", "d2"}),
        (FilterTree(must_not=(cond("tags", match={"value": "all"}),)), set()),
        (FilterTree(must=(cond("n", match={"any": [0, 3]}),)), {"d0", "d3"}),
        (FilterTree(must_not=(FilterTree(should=(n[0], n[1])),)), {"d2", "d3", "d4"}),
        (
            FilterTree(must_not=(FilterTree(must=(even, cond("n", range={"gte": 2}))),)),
            {"d0", "d1", "d3"},
        ),
    ]
    wrong = {repr(f): (ids(store, f), want) for f, want in cases if ids(store, f) != want}
    assert not wrong, wrong
    assert store.count_matching(FilterTree(must=(odd,))) == 2
    assert store.count_matching(None) == 5


def test_page_walks_every_point_once(store: VectorStore) -> None:
    seen: list[str] = []
    start = None
    while True:
        views, start = store.page(None, 2, start, ["text"])
        assert all(v["text"] == TEXTS[v["doc_id"]] for v in views)
        seen += [v["doc_id"] for v in views]
        if start is None:
            break
    assert sorted(seen) == sorted(TEXTS)
    even = FilterTree(must=(cond("parity", match={"value": "even"}),))
    first, nxt = store.page(even, 1, None, ())
    assert nxt is not None
    second, _ = store.page(even, 5, nxt, ())
    assert {v["doc_id"] for v in first + second} == {"d0", "d2", "d4"}


def test_a_write_replaces_the_document_whole(store: VectorStore) -> None:
    text = "an edited text"
    store.upsert(
        [
            PointWrite(
                doc_id="d0",
                text=text,
                text_sha256=text_sha256(text),
                metadata={"n": 0},
                sparse=bm25.document(text),
            )
        ]
    )
    got = store.retrieve(["d0"])["d0"]
    assert got["text"] == text and got["metadata"] == {"n": 0}
    assert "model_fingerprint" not in got and store.with_dense(["d0"]) == set()
    assert ids(store, FilterTree(must=(cond("parity", match={"value": "even"}),))) == {"d2", "d4"}
    assert not store.has_payload_field("metadata.gone") and store.has_payload_field("metadata.n")


def test_payload_fields_and_location(store: VectorStore) -> None:
    assert store.has_payload_field("metadata.parity") and store.has_payload_field("metadata.tags")
    assert not store.has_payload_field("metadata.nope")
    assert isinstance(store.location, str) and store.location


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
    asyncio.run(plane.switch(lambda now: Routing(mode=Mode.OLD), "set mode", "test"))
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


# --- Chroma ---------------------------------------------------------------------------------


def test_chroma_binding_lives_in_the_collection(chroma_server: Any) -> None:
    """Any replica opening the collection reads the same binding (BM25 not claimed without a
    sidecar directory: Chroma holds none); a collection crossfade did not create is never
    taken over."""
    import chromadb
    from chromadb.config import Settings

    cfg = chroma_config(chroma_server.url)
    s = ChromaStore("t", cfg)
    assert s.info() is None and s.count() == 0
    s.create(INFO)
    s.upsert([write(d, t, dense=d != "d4") for d, t in TEXTS.items()])
    again = ChromaStore("t", cfg)
    assert again.info() == IndexInfo(dim=DIM, fingerprint=FP, sparse=False)
    assert again.count() == 5 and again.count(dense_only=True) == 4
    with pytest.raises(RuntimeError, match="bound to"):
        again.create(IndexInfo(dim=DIM, fingerprint="other@1", sparse=False))
    again.close()
    s.drop()
    s.close()

    plain = chromadb.HttpClient(
        host="127.0.0.1", port=chroma_server.port, settings=Settings(anonymized_telemetry=False)
    )
    theirs = chroma_config(chroma_server.url)
    plain.create_collection(theirs.collection, embedding_function=None)
    other = ChromaStore("t", theirs)
    assert other.info() is None
    with pytest.raises(RuntimeError, match="not crossfade's"):
        other.create(INFO)
    other.close()
    plain.delete_collection(theirs.collection)
    plain.close()


def test_chroma_bm25_sidecar(chroma_server: Any, tmp_path: Path) -> None:
    """BM25 for a Chroma collection lives in a sidecar under the given directory: the binding
    says so for every replica; a store opened on it again searches it; where the sidecar is
    missing BM25 is left out and writes are refused before anything is written; a write that
    reached Chroma only is found by `bm25_divergence` and mended by writing it again."""
    cfg = chroma_config(chroma_server.url)
    s = ChromaStore("new", cfg, tmp_path / "bm25")
    s.create(INFO)
    assert s.info() == INFO and s.sparse
    s.upsert([write(d, t, dense=d != "d4") for d, t in TEXTS.items()])
    s.close()

    again = ChromaStore("new", cfg, tmp_path / "bm25")
    assert again.info() == INFO and again.sparse
    assert [d for d, _ in again.search_sparse(bm25.query("lazy fox"), 3)] == ["d3"]
    with pytest.raises(UnsupportedFilter):  # what Chroma refuses, the BM25 list refuses too
        again.search_sparse(bm25.query("fox"), 3, Filter(must=[cond("a[].b", match={"value": 1})]))
    assert again.bm25_divergence() == set()

    # a crash between the Chroma write and the sidecar's: Chroma has the new text only
    moved = write("d2", "A fox in the fusion", dense=False)
    ChromaStore._write(again, again._coll(), [moved], DIM)
    assert again.bm25_divergence() == {"d2"}
    again.upsert([moved])  # the journal's replay: the same batch again
    assert again.bm25_divergence() == set()
    assert {d for d, _ in again.search_sparse(bm25.query("fox"), 5)} == {"d2", "d3"}
    again.close()

    elsewhere = ChromaStore("new", cfg, tmp_path / "other")  # another data_dir
    assert elsewhere.info() == INFO and not elsewhere.sparse
    with pytest.raises(RuntimeError, match="sidecar .* is missing"):
        elsewhere.upsert([write("d9", "nine")])
    with pytest.raises(RuntimeError, match="sidecar .* is missing"):
        elsewhere.delete(["d0"])
    assert elsewhere.count() == 5
    elsewhere.close()

    dropped = ChromaStore("new", cfg, tmp_path / "bm25")
    dropped.drop()
    assert not (tmp_path / "bm25").exists()
    dropped.close()


def test_chroma_filters_refuse_what_flat_metadata_cant_say() -> None:
    with pytest.raises(UnsupportedFilter, match="arrays of objects"):
        to_chroma_where(FilterTree(must=(cond("a[].b", match={"value": 1}),)))
    assert to_chroma_where(None) is None
    # an empty id list matches nothing: Chroma is asked for no record at all
    assert to_chroma_where(FilterTree(must=(HasId(()),))) == {"doc_id": {"$eq": ""}}


def test_chroma_server_stopped_mid_use_is_index_unavailable(tmp_path: Path) -> None:
    """A Chroma that stops answering (stopped, hung, or a 5xx from before it) raises
    IndexUnavailable from every call (503 / degraded serving, never a 500); a store opened
    while it is down starts anyway, and all works again once it is back."""
    from loadtest.servers import Chroma, FaultProxy
    from proxy.availability import probe

    server = Chroma(tmp_path / "data").start()
    try:
        cfg = chroma_config(server.url)
        s = ChromaStore("old", cfg)
        s.create(INFO)
        s.upsert([write(d, t, dense=d != "d4") for d, t in TEXTS.items()])
        assert s.search_dense(vec(1), 1)[0][0] == "d1"
        server.stop()
        calls = {
            "search_dense": lambda: s.search_dense(vec(1), 3),
            "query_dense": lambda: s.query_dense(vec(1), 3, None, ["text"]),
            "count": lambda: s.count(),
            "count dense": lambda: s.count(dense_only=True),
            "retrieve": lambda: s.retrieve(["d1"]),
            "with_dense": lambda: s.with_dense(["d1"]),
            "upsert": lambda: s.upsert([write("d4", TEXTS["d4"])]),
            "delete": lambda: s.delete(["d4"]),
            "page": lambda: s.page(None, 2, None, ()),
            "fingerprints": lambda: s.fingerprints(),
            "ping": lambda: probe(s),
        }
        for what, call in calls.items():
            with pytest.raises(IndexUnavailable, match="connection refused") as e:
                call()
            assert e.value.side == "old" and e.value.status == 503, what
        late = ChromaStore("new", chroma_config(server.url))  # opened while it is down
        with pytest.raises(IndexUnavailable):
            late.info()

        server.start()
        assert s.search_dense(vec(1), 1)[0][0] == "d1" and s.count() == 5
        time.sleep(1.1)  # a failed first contact is asked again after a second
        assert late.info() is None
        late.close()

        proxy = FaultProxy(server.url).start()  # between crossfade and the server
        try:
            via = ChromaStore(
                "old",
                cfg.model_copy(update={"url": f"http://127.0.0.1:{proxy.port}", "timeout_s": 1}),
            )
            assert via.count(dense_only=True) == 4
            proxy.p500 = 1.0
            with pytest.raises(IndexUnavailable, match="HTTP 500"):
                via.search_dense(vec(1), 3)
            proxy.p500, proxy.hang = 0.0, True
            with pytest.raises(IndexUnavailable, match="no answer within 1s"):
                via.search_dense(vec(1), 3)
            proxy.hang = False
            assert via.search_dense(vec(1), 1)[0][0] == "d1"
            via.close()
        finally:
            proxy.stop()
        s.close()
    finally:
        server.stop()


def test_the_factory_opens_chroma(tmp_path: Path) -> None:
    from proxy.config import load_settings
    from proxy.state.sqlite import SqliteState
    from proxy.store.factory import open_store
    from tests.helpers import ROOT

    settings = load_settings(
        ROOT / "config" / "demo.yaml",
        data_dir=str(tmp_path),
        indexes={
            "old": {"backend": "chroma", "url": f"local:{tmp_path / 'c'}", "collection": "docs_v1"},
            "new": {"backend": "chroma", "url": f"local:{tmp_path / 'c'}", "collection": "docs_v2"},
        },
    )
    state = SqliteState(tmp_path)
    old, new = open_store(settings, "old", None, state), open_store(settings, "new", None, state)
    assert isinstance(old, ChromaStore) and old.location.startswith("chroma collection 'docs_v1'")
    assert (old.remote, old.sparse, old.aliases, old.named_vectors, old.in_place) == (
        True,
        False,
        False,
        False,
        False,
    )
    old.close()
    new.close()
    state.close()
