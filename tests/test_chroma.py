"""A migration whose two indexes are Chroma collections on a real `chroma run` server, with real
models: ingest, start (a seeded record holds a placeholder embedding, never a hit), fused
search at partial coverage without a BM25 list (Chroma has none, and says so: `sparse`),
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
from proxy.migration.state import HIT
from proxy.migration.status import migration_status, verify
from proxy.migration.worker import Reembedder
from proxy.model import Embedder
from proxy.runtime import Runtime
from proxy.writes import delete_documents, upsert_documents
from tests.helpers import demo_settings, drain

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
        assert info is not None and not info.sparse and not new.sparse

        searcher = rt.searcher()
        target = docs[3]

        def top(mode: Mode) -> list[str]:
            res = asyncio.run(searcher.search(target.text, 5, mode, fields=()))
            return [h.doc_id for h in res.hits]

        assert top(Mode.FUSED)[0] == target.doc_id  # the old index's list, no BM25 list
        assert top(Mode.NEW) == []  # no new vector yet: the placeholders are never hits

        worker = Reembedder(rt)
        rt.state.enqueue([target.doc_id], HIT)
        assert worker.step() == 1 and new.with_dense([target.doc_id]) == {target.doc_id}
        searcher.coverage.recount()
        assert top(Mode.NEW) == [target.doc_id] and top(Mode.FUSED)[0] == target.doc_id

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
        assert delete_documents(rt, [added.doc_id]) == {"old": 1, "new": 1}
        assert old.retrieve([added.doc_id]) == new.retrieve([added.doc_id]) == {}
        for store in (old, new):
            store.drop()  # the server outlives the test
    finally:
        rt.close()
