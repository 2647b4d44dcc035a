"""A migration whose two indexes are Chroma collections on a real `chroma run` server, with real
models: ingest, start (a seeded record holds a placeholder embedding, never a hit), fused
search at partial coverage with a BM25 list from the new collection's sidecar (Chroma has no
BM25: an edge shard under data_dir holds it, written by every write of the collection),
lazy hits and the backfill through conditional re-embeds, dual writes and deletes, verify."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from proxy.config import Mode
from proxy.demo import python_reference
from proxy.document import Doc
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.migration.status import migration_status, verify
from proxy.migration.worker import Reembedder
from proxy.model import Embedder
from proxy.runtime import Runtime
from proxy.state import HIT
from proxy.writes import delete_documents, upsert_documents
from tests.helpers import chroma_client, demo_settings, drain

N = 24


def test_a_migration_between_two_chroma_collections(
    tmp_path: Path, models: dict[str, Embedder], chroma_server: Any
) -> None:
    docs = python_reference()[:N]
    run = uuid.uuid4().hex[:8]
    indexes = {
        side: {"backend": "chroma", "url": chroma_server.url, "collection": f"{side}-{run}"}
        for side in ("old", "new")
    }
    settings = demo_settings(tmp_path, indexes=indexes, migration={"batch_size": 8})
    rt = Runtime(settings, dict(models))
    try:
        ingest(rt, "old", docs, progress=False)
        started = start_migration(rt, progress=False)
        old, new = rt.store("old"), rt.store("new")
        assert started["seeded"] == N and started["migrated"] == 0
        info = new.info()
        assert info is not None and info.sparse and new.sparse  # BM25 in the sidecar
        assert not old.sparse  # (the old index never asked for BM25)

        searcher = rt.searcher()
        target = docs[3]

        def top(mode: Mode) -> list[str]:
            res = asyncio.run(searcher.search(target.text, 5, mode, fields=()))
            return [h.doc_id for h in res.hits]

        def new_dense() -> list[str]:
            """The hits of `new` mode ranked by the new index's dense list (BM25's aside)."""
            res = asyncio.run(searcher.search(target.text, 5, Mode.NEW, fields=()))
            return [h.doc_id for h in res.hits if h.ranks.get("new") is not None]

        assert top(Mode.FUSED)[0] == target.doc_id  # the old index's list and BM25
        res = asyncio.run(searcher.search(target.text, 5, Mode.FUSED, fields=()))
        assert res.hits[0].ranks.get("bm25") == 1  # seeded: keyword search from minute one
        assert new_dense() == []  # no new vector yet: the placeholders are never hits

        worker = Reembedder(rt)
        rt.state.enqueue([target.doc_id], HIT)
        assert worker.step() == 1 and new.with_dense([target.doc_id]) == {target.doc_id}
        searcher.coverage.recount()
        assert new_dense() == [target.doc_id] and top(Mode.FUSED)[0] == target.doc_id
        assert top(Mode.NEW)[0] == target.doc_id

        drain(worker)
        fp = rt.model("new").fingerprint.id
        status = migration_status(rt, worker)
        assert status["indexes"]["new"]["fingerprints"] == {fp: N}
        assert status["indexes"]["new"]["coverage"] == 1.0
        report = verify(rt, sample=6)
        assert report["ok"], report["problems"]

        added = Doc("added-1", "Walrus operator := assigns inside an expression.", {"topic": "x"})
        assert upsert_documents(rt, [added]) == ["old", "new"]
        for side, store in (("old", old), ("new", new)):
            got = store.retrieve([added.doc_id])[added.doc_id]
            assert got["model_fingerprint"] == rt.model(side).fingerprint.id
            assert got["metadata"] == {"topic": "x"}
        bm25 = rt.bm25
        walrus = [d for d, _ in new.search_sparse(bm25.query("walrus"), 3)]
        assert walrus == [added.doc_id]  # the dual write reached the sidecar
        assert delete_documents(rt, [added.doc_id]) == {"old": 1, "new": 1}
        assert new.search_sparse(bm25.query("walrus"), 3) == []
        assert new.bm25_divergence() == set()  # type: ignore[attr-defined]
        assert old.retrieve([added.doc_id]) == new.retrieve([added.doc_id]) == {}
        for store in (old, new):
            store.drop()  # the server outlives the test
        # ... and its other collections get nothing of ours: Chroma 1.5.9 hands a dropped
        # collection's array metadata to the records of the next one created (an app's)
        app = chroma_client(chroma_server.url).create_collection(f"app-{run}")
        app.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], metadatas=[{"k": 1}] * 2)
        assert app.get(include=["metadatas"])["metadatas"] == [{"k": 1}, {"k": 1}]
        chroma_client(chroma_server.url).delete_collection(app.name)
    finally:
        rt.close()
