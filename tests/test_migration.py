"""Lazy re-embedding and backfill on real models and the embedded engine: priority, budget,
pause/limit, the edit-during-re-embed race, the bilingual-write guard, and verification."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from proxy.config import Settings
from proxy.demo import python_reference
from proxy.document import Doc
from proxy.ingest import ingest
from proxy.migration.ray_backfill import clear_dead_claims
from proxy.migration.start import start_migration
from proxy.migration.status import migration_status, verify
from proxy.migration.worker import Reembedder, set_control
from proxy.model import Embedded, Embedder
from proxy.runtime import Runtime
from proxy.state import BACKFILL, HIT
from proxy.state.sqlite import SqliteState
from proxy.store import FingerprintMismatch, PointWrite
from proxy.writes import delete_documents, upsert_documents
from tests.helpers import demo_settings, drain, wait_for

N = 40


def migration_settings(data: Path) -> Settings:
    return demo_settings(data, migration={"batch_size": 8})


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Embedder]) -> Path:
    """A data dir with N passages ingested and the migration started, built once: each test
    runs on a copy of it."""
    data = tmp_path_factory.mktemp("migration") / "data"
    with Runtime(migration_settings(data), dict(models)) as rt:
        ingest(rt, "old", python_reference()[:N], progress=False)
        start_migration(rt, progress=False)
    return data


@pytest.fixture
def migrating(
    tmp_path: Path, cached_models: dict[str, Embedder], started: Path
) -> Iterator[Runtime]:
    data = shutil.copytree(started, tmp_path / "data")
    rt = Runtime(migration_settings(Path(data)), dict(cached_models))
    yield rt
    rt.close()


def test_queue_dedupes_prioritises_and_survives_reopen(tmp_path: Path) -> None:
    q = SqliteState(tmp_path)
    assert q.enqueue(["a", "b", "c"], BACKFILL) == 3
    assert q.enqueue(["c", "d", "d"], HIT) == 1  # c moves up, d is new, duplicates collapse
    assert q.depth() == {"hits": 2, "backfill": 2, "total": 4}
    assert q.claim(2, lease_s=60) == ["c", "d"]
    assert q.claim(10, lease_s=60) == ["a", "b"]  # claimed items are leased, not handed twice
    q.done(["c"])
    q.set("paused", True)
    q.close()
    again = SqliteState(tmp_path)
    assert again.depth()["total"] == 3 and again.get("paused") is True
    assert again.claim(10, lease_s=60) == []  # leases persist too
    again.close()


def test_expired_lease_returns_the_item(tmp_path: Path) -> None:
    q = SqliteState(tmp_path)
    q.enqueue(["a"], HIT)
    assert q.claim(1, lease_s=-1) == ["a"]  # a worker that claimed and died
    assert q.claim(1, lease_s=60) == ["a"]
    q.close()


def test_hits_first_then_backfill_to_full_coverage(migrating: Runtime) -> None:
    rt = migrating
    new = rt.store("new")
    hits = [f"{d.doc_id}" for d in python_reference()[N - 3 : N]]
    rt.state.enqueue(hits, HIT)
    worker = Reembedder(rt)
    assert worker.step() == 3
    assert new.with_dense(hits) == set(hits)  # the hits went first
    assert new.count(dense_only=True) == 3
    drain(worker)
    status = migration_status(rt, worker)
    fp = rt.model("new").fingerprint.id
    assert status["indexes"]["new"]["fingerprints"] == {fp: N}
    assert status["indexes"]["new"]["coverage"] == 1.0 and status["queue"]["total"] == 0
    report = verify(rt, sample=10)
    assert report["ok"], report["problems"]
    assert report["documents"] == report["unique_ids"] == N


def test_backfill_limit_and_switch(migrating: Runtime) -> None:
    rt = migrating
    worker = Reembedder(rt)
    set_control(rt.state, until=50)
    drain(worker)
    covered = rt.store("new").count(dense_only=True)
    assert N * 0.5 <= covered < N
    set_control(rt.state, backfill=False, until=100)
    assert worker.refill() == 0
    rt.state.enqueue([python_reference()[N - 1].doc_id], HIT)  # lazy hits still flow
    drain(worker)
    set_control(rt.state, backfill=True)
    drain(worker)
    assert rt.store("new").count(dense_only=True) == N


def test_claims_a_dead_process_left_are_cleared_once_their_lease_ends(migrating: Runtime) -> None:
    """A Ray actor killed as its write landed leaves its chunk queued under its lease: once
    the lease ends the driver takes the migrated (and the deleted) off the queue, and hands
    back the one still to embed."""
    rt = migrating
    docs = python_reference()[:3]
    migrated, deleted, pending = (d.doc_id for d in docs)
    assert rt.state.claim_ids([migrated, deleted, pending], 0.5) == sorted(
        [migrated, deleted, pending]
    )
    upsert_documents(rt, [docs[0]])  # written by the process that then died
    delete_documents(rt, [deleted])
    left = clear_dead_claims(rt, rt.store("new"), lease_s=0.5)
    assert left == 1 and rt.state.claim(5, 60) == [pending]
    assert rt.store("new").with_dense([migrated, pending]) == {migrated}


def test_sorted_window_batches_by_length_and_a_pause_acts_between_batches(
    migrating: Runtime,
) -> None:
    """A step claims `sort_window` documents and embeds them shortest first, `batch_size` at a
    time; a pause stops it after the batch in flight and puts the rest back in the queue."""
    rt = migrating
    rt.settings.migration.sort_window = 24  # three batches of 8
    worker = Reembedder(rt)
    set_control(rt.state, action="pause")  # seen after the first batch is written
    assert worker.step() == 8
    new = rt.store("new")
    texts = {d.doc_id: d.text for d in python_reference()[:N]}
    migrated = new.with_dense(list(texts))
    assert len(migrated) == 8
    assert rt.state.depth()["total"] >= 16  # the unembedded rest of the window is queued again
    # Shortest first: the batch written is the 8 shortest of the window it was sorted from.
    window = migrated | set(rt.state.claim(16, lease_s=60))
    shortest = sorted(window, key=lambda d: len(texts[d]))[:8]
    assert {len(texts[d]) for d in migrated} == {len(texts[d]) for d in shortest}


def test_budget_sleeps_to_honour_cpu_share_and_rate(migrating: Runtime) -> None:
    worker = Reembedder(migrating)
    worker.cfg = worker.cfg.model_copy(update={"cpu_share": 0.25, "max_docs_per_s": 0})
    assert worker.sleep_after(8, busy_s=1.0) == pytest.approx(3.0)
    worker.cfg = worker.cfg.model_copy(update={"cpu_share": 1.0, "max_docs_per_s": 4})
    assert worker.sleep_after(8, busy_s=1.0) == pytest.approx(1.0)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority is Linux's")
def test_worker_embeds_at_background_priority_on_its_own_thread(
    migrating: Runtime, models: dict[str, Embedder]
) -> None:
    import torch

    migrating._models["new"] = models["new"]  # not the cached one: the worker embeds here
    worker = Reembedder(migrating)  # defaults: nice 19, one thread

    def probe() -> tuple[int, int, int]:
        tid = threading.get_native_id()
        return tid, os.getpriority(os.PRIO_PROCESS, tid), torch.get_num_threads()

    tid, nice, threads = worker.inference.submit(probe).result()
    here = threading.get_native_id()
    assert tid != here and threads == migrating.settings.migration.threads == 1
    assert nice == migrating.settings.migration.nice == 19
    assert os.getpriority(os.PRIO_PROCESS, here) < nice  # the caller keeps its priority
    assert drain(worker) == N  # and the worker still migrates everything
    assert verify(migrating)["ok"]


class EditsMidFlight:
    """The new model, but the first batch it embeds triggers an edit of `doc` through the
    proxy's write path before the re-embed is written: the race, made deterministic."""

    hosted = False
    max_in_flight = 1

    def __init__(self, real: Embedder, rt: Runtime, doc: Doc) -> None:
        self.real, self.rt, self.doc = real, rt, doc
        self.fingerprint = real.fingerprint
        self.request_batch = real.request_batch
        self.fired = False

    def embed_billed(self, texts: Sequence[str]) -> Embedded:
        return Embedded(self.embed_documents(texts), 0)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.real.embed_queries(texts)

    def configure_thread(self) -> None:
        self.real.configure_thread()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        out = self.real.embed_documents(texts)
        if not self.fired:
            self.fired = True
            upsert_documents(self.rt, [self.doc])
        return out


class HeldInFlight(EditsMidFlight):
    """The new model, holding each batch until released: a batch kept in flight."""

    def __init__(self, real: Embedder) -> None:
        self.real, self.fingerprint, self.request_batch = real, real.fingerprint, real.request_batch
        self.entered, self.go = threading.Event(), threading.Event()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        assert self.go.wait(60)
        return self.real.embed_documents(texts)


def test_a_worker_mid_batch_after_a_resume_never_reports_paused(migrating: Runtime) -> None:
    """`paused` in a worker's report (its fleet heartbeat) means no batch in flight: a pause
    is waited for by reading it. A worker resumed and deep in its first batch said `paused`
    until that batch ended (seen in tests/test_fleet.py: 16 documents written after both
    workers reported paused)."""
    rt = migrating
    held = HeldInFlight(rt.model("new"))
    rt._models["new"] = held  # type: ignore[assignment]
    worker = Reembedder(rt)

    async def run() -> None:
        task = asyncio.create_task(worker.run(idle_s=0.02))
        try:
            set_control(rt.state, action="pause")
            await asyncio.to_thread(
                wait_for, lambda: worker.report()["state"] == "paused", 30, "the worker paused"
            )
            set_control(rt.state, action="resume")
            assert await asyncio.to_thread(held.entered.wait, 30)
            report = worker.report()
            assert report["busy"] and report["state"] != "paused", report
            held.go.set()  # and the batch ends written
            await asyncio.to_thread(
                wait_for, lambda: worker.stats.processed > 0, 30, "the batch written"
            )
        finally:
            held.go.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(worker.executor.shutdown, True)  # a step in flight ends

    asyncio.run(run())
    assert rt.store("new").count(dense_only=True) == worker.stats.processed > 0


def test_edit_during_reembed_ends_with_the_final_texts_vector(migrating: Runtime) -> None:
    rt = migrating
    target = python_reference()[0]
    final = Doc(target.doc_id, "Edited: the assert statement checks a condition at runtime.")
    real = rt.model("new")
    rt._models["new"] = EditsMidFlight(real, rt, final)
    rt.state.enqueue([target.doc_id], HIT)
    Reembedder(rt).step()
    rt._models["new"] = real
    new = rt.store("new")
    assert new.retrieve([target.doc_id], ["text"])[target.doc_id]["text"] == final.text
    (hit,) = new.search_dense(real.embed_documents([final.text])[0], 1)
    assert hit[0] == target.doc_id and hit[1] > 0.999
    report = verify(rt, sample=5)
    assert report["with_vector"] == 1 and report["sampled"] == 1
    assert not [p for p in report["problems"] if "without a vector" not in p]


def test_bilingual_write_guard_on_real_models(migrating: Runtime) -> None:
    rt = migrating
    doc = python_reference()[1]
    old_model = rt.model("old")
    foreign = PointWrite(
        doc_id=doc.doc_id,
        text=doc.text,
        text_sha256=doc.sha,
        dense=old_model.embed_documents([doc.text])[0],  # 384-d too: the silent case
        fingerprint=old_model.fingerprint.id,
    )
    with pytest.raises(FingerprintMismatch, match="bound to"):
        rt.store("new").upsert([foreign])
    assert rt.store("new").count(dense_only=True) == 0


def test_dual_write_and_delete(migrating: Runtime) -> None:
    rt = migrating
    doc = Doc("added-1", "Walrus operator := assigns inside an expression.", {"topic": "x"})
    assert upsert_documents(rt, [doc]) == ["old", "new"]
    for side in ("old", "new"):
        p = rt.store(side).retrieve([doc.doc_id])[doc.doc_id]
        assert p["model_fingerprint"] == rt.model(side).fingerprint.id
    assert rt.store("new").search_sparse(rt.bm25.query("walrus operator"), 1)[0][0] == doc.doc_id
    assert delete_documents(rt, [doc.doc_id]) == {"old": 1, "new": 1}
    assert rt.store("old").retrieve([doc.doc_id]) == rt.store("new").retrieve([doc.doc_id]) == {}
