"""Fault injection: a real proxy process killed with SIGKILL during (a) the backfill, (b) a
stream of document writes, (c) a cutover; restarted each time and checked point by point:
no document lost or duplicated, every vector that of its text's hash, the two indexes
agreeing, and the serving pointer either the old or the new one, never neither.
Bounded in count and time; loopback only."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.demo import python_reference, write_eval_set
from proxy.document import Doc, text_sha256
from proxy.ingest import ingest
from proxy.migration.cutover import AuditLog
from proxy.migration.start import start_migration
from proxy.migration.status import verify
from proxy.migration.worker import Reembedder
from proxy.runtime import SIDES, Runtime
from proxy.state.sqlite import AUDIT, POINTER, SqliteState
from proxy.writes import (
    JournalBehind,
    WritePending,
    flush_writes,
    replay_journal,
    retry_journal,
    upsert_documents,
)
from tests.helpers import RW, ProxyProcess, demo_settings, drain, wait_for

N = 40
KEY = "fault-test-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}


def points(rt: Runtime, side: str) -> list[dict[str, Any]]:
    fields = ["text", "text_sha256", "vector_sha256", "model_fingerprint"]
    return [p for batch in rt.store(side).scroll(512, fields) for p in batch]


def check_indexes(rt: Runtime) -> dict[str, dict[str, dict[str, Any]]]:
    """The invariants every fault must leave intact; returns {side: {doc_id: payload}}."""
    out = {}
    for side in SIDES:
        ps = points(rt, side)
        ids = [p["doc_id"] for p in ps]
        assert len(ids) == len(set(ids)), f"duplicate documents in {side}"
        assert rt.store(side).count() == len(ids)
        for p in ps:
            assert p["text_sha256"] == text_sha256(p["text"]), (side, p["doc_id"])
        out[side] = {p["doc_id"]: p for p in ps}
    # Both indexes hold the same documents with the same text (dual writes never half-done).
    old, new = out["old"], out["new"]
    assert set(old) == set(new), set(old) ^ set(new)
    assert all(old[d]["text_sha256"] == new[d]["text_sha256"] for d in old)
    # Every old vector is of its text; every new vector (where one exists) too: verify().
    assert all(p["vector_sha256"] == p["text_sha256"] for p in old.values())
    report = verify(rt, sample=16)
    assert not [x for x in report["problems"] if "without a vector" not in x], report
    return out


def check_pointer(data: Path, allowed: set[str]) -> dict[str, Any]:
    pointer = json.loads((data / POINTER).read_text()) if (data / POINTER).exists() else None
    mode = pointer["mode"] if pointer else "fused"  # no pointer yet = the config's mode
    assert mode in allowed, pointer
    return pointer or {"mode": mode, "generation": 0}


def setup_migration(proxy: ProxyProcess, models: dict, migrated: bool = False) -> list[Doc]:
    docs = python_reference()[:N]
    with Runtime(proxy.settings(), dict(models)) as rt:
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, progress=False)
        if migrated:
            drain(Reembedder(rt))
    return docs


def test_kill_9_during_backfill_then_restart_completes(tmp_path: Path, models: dict) -> None:
    migration = {"batch_size": 4, "max_docs_per_s": 8, "lazy": True}
    proxy = ProxyProcess(tmp_path, migration, admin_key=KEY)
    setup_migration(proxy, models)
    proxy.start()
    try:
        # searches enqueue hits durably; then kill in the middle of the sweep
        q = {"query": "class definitions", "k": 8}
        hits = httpx.post(proxy.url + "/search", json=q).json()["results"]
        wait_for(lambda: 0.2 < proxy.status()["indexes"]["new"]["coverage"] < 0.8, 60, "mid")
    finally:
        proxy.kill9()
    proxy.start()
    try:
        wait_for(lambda: proxy.status()["indexes"]["new"]["coverage"] == 1.0, 120, "completion")
        s = proxy.status()
        assert s["indexes"]["new"]["documents"] == N and s["queue"]["total"] == 0
    finally:
        proxy.stop()
    check_pointer(proxy.data, {"fused"})
    with Runtime(proxy.settings(), dict(models)) as rt:
        check_indexes(rt)
        report = verify(rt, sample=N)
        assert report["ok"], report["problems"]
        assert report["documents"] == report["unique_ids"] == report["with_vector"] == N
        migrated = rt.store("new").with_dense([h["doc_id"] for h in hits])
        assert len(migrated) == len(hits)  # nothing enqueued was lost


def test_kill_9_during_document_writes(tmp_path: Path, models: dict) -> None:
    """Batches of new and edited documents stream in; the proxy is killed while one is in
    flight. Every acknowledged batch is in both indexes, the one in flight is in both or in
    neither, and nothing else changed."""
    proxy = ProxyProcess(tmp_path, {"lazy": False, "backfill": False}, admin_key=KEY)
    docs = setup_migration(proxy, models)
    extra = python_reference()[N : N + 200]
    acked: list[list[dict[str, Any]]] = []
    in_flight: list[list[dict[str, Any]]] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(timeout=60, headers=RW) as client:
            for i in range(50):
                if stop.is_set():
                    return
                # three new documents and an edit of an existing one per batch
                batch = [
                    {"id": f"w{i}-{j}", "text": extra[(3 * i + j) % len(extra)].text}
                    for j in range(3)
                ]
                target = docs[i % N]
                batch.append({"id": target.doc_id, "text": f"{target.text} (edit {i})"})
                in_flight[:] = [batch]
                try:
                    r = client.put(proxy.url + "/documents", json={"documents": batch})
                except httpx.TransportError:
                    return
                assert r.status_code == 200, r.text
                acked.append(batch)

    proxy.start()
    thread = threading.Thread(target=writer, daemon=True)
    try:
        thread.start()
        wait_for(lambda: len(acked) >= 3, 120, "three acknowledged batches")
        time.sleep(random.Random(7).uniform(0.0, 0.15))  # lands inside the next batch's write
    finally:
        proxy.kill9()
        stop.set()
        thread.join(timeout=60)
    assert in_flight and in_flight[0] not in acked
    proxy.start()  # the journal is replayed before serving
    proxy.stop()
    check_pointer(proxy.data, {"fused"})
    with Runtime(proxy.settings(), dict(models)) as rt:
        idx = check_indexes(rt)["old"]
        expected = {d.doc_id: d.text for d in docs}
        for batch in acked:
            expected.update({d["id"]: d["text"] for d in batch})
        pending = {d["id"]: d["text"] for d in in_flight[0]}
        landed = [idx.get(d, {}).get("text") == t for d, t in pending.items()]
        assert all(landed) or not any(landed), "the batch in flight landed in part"
        if all(landed):
            expected.update(pending)
        assert {d: p["text"] for d, p in idx.items()} == expected
        assert rt.journal.pending() == []


def test_a_write_cut_between_the_two_indexes_is_replayed(tmp_path: Path, models: dict) -> None:
    """The window the journal exists for, hit deterministically: the old index written, the
    process gone before the new one. The next start applies the batch to both."""
    settings = demo_settings(tmp_path)
    docs = python_reference()[:8]
    with Runtime(settings, dict(models)) as rt:
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, progress=False)
        new_store = rt.store("new")

        class Crash(BaseException):  # the process going away, not an engine error
            pass

        def crash(*_: object) -> None:
            raise Crash

        new_store.upsert = crash  # type: ignore[method-assign]
        edited = [Doc(docs[0].doc_id, docs[0].text + " (edited)"), Doc("added", "A new passage.")]
        with pytest.raises(Crash):
            upsert_documents(rt, edited)
        assert rt.store("old").count() == 9 and rt.store("new").count() == 8
    with Runtime(settings, dict(models)) as rt:  # "restart"
        assert replay_journal(rt) == 1
        idx = check_indexes(rt)
        assert idx["new"]["added"]["text"] == "A new passage."
        assert idx["new"][docs[0].doc_id]["text"] == docs[0].text + " (edited)"
        assert flush_writes(rt) == 1  # on disk in both: the journal lets it go
        assert replay_journal(rt) == 0


def test_a_batch_the_engine_refuses_is_retried_until_every_index_has_it(
    tmp_path: Path, models: dict
) -> None:
    """A write the new index refuses (a full disk) stays in the journal with what is left to
    apply, never set aside: later writes wait behind it (applied nowhere), and once the
    engine takes writes again the retry lands it in the new index too."""
    settings = demo_settings(tmp_path, writes={"retry_base_s": 0.05})
    docs = python_reference()[:4]
    with Runtime(settings, dict(models)) as rt:
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, progress=False)
        real = rt.store("new").upsert

        def refuse(*_: object) -> None:
            raise OSError(28, "No space left on device")

        rt.store("new").upsert = refuse  # type: ignore[method-assign]
        with pytest.raises(WritePending, match="applied to old, not yet to the new index"):
            upsert_documents(rt, [Doc("bad", "A passage the new index refuses for now.")])
        assert rt.journal.status()["pending"] == 1 and rt.journal.status()["retrying"] == 1
        with pytest.raises(JournalBehind):  # waits behind it, applied nowhere
            upsert_documents(rt, [Doc("later", "A later write.")])
        assert rt.store("old").retrieve(["later"], []) == {}
        rt.store("new").upsert = real  # type: ignore[method-assign]
        wait_for(lambda: retry_journal(rt), 10, "the journal to land its batch")
        assert "bad" in rt.store("new").retrieve(["bad"], [])
        upsert_documents(rt, [Doc("later", "A later write.")])
        assert rt.journal.status()["pending"] == 0
        idx = check_indexes(rt)
        assert idx["old"].keys() == idx["new"].keys() and "later" in idx["new"]


def test_kill_9_during_cutover(tmp_path: Path, models: dict, cached_models: dict) -> None:
    """Killed at several points of a cutover (during the gate's evaluation, around the
    switch, after it): after each restart the pointer is the old or the new one, the proxy
    serves in that mode, and the audit log agrees with the pointer."""
    proxy = ProxyProcess(tmp_path, admin_key=KEY)
    # The backfill of passages other modules backfill too: the session's cached vectors.
    docs = setup_migration(proxy, cached_models, migrated=True)
    write_eval_set(proxy.data / "eval", docs)
    for delay in (0.4, 1.2, 4.0):
        proxy.start()
        before = check_pointer(proxy.data, {"fused", "new"})
        if before["mode"] == "new":  # roll back first so that there is a cutover to cut
            r = httpx.post(proxy.url + "/admin/rollback", headers=ADMIN, json={}, timeout=60)
            assert r.status_code == 200
        result: dict[str, Any] = {}

        def cut(out: dict[str, Any] = result) -> None:
            body = {"beir": str(proxy.data / "eval"), "force": True, "actor": "fault-test"}
            try:
                out["r"] = httpx.post(
                    proxy.url + "/admin/cutover", headers=ADMIN, json=body, timeout=60
                )
            except httpx.TransportError as exc:
                out["error"] = repr(exc)

        t = threading.Thread(target=cut, daemon=True)
        t.start()
        time.sleep(delay)
        proxy.kill9()
        t.join(timeout=60)
        pointer = check_pointer(proxy.data, {"fused", "new"})
        if "r" in result:  # acknowledged: it must have stuck
            assert result["r"].status_code == 200 and pointer["mode"] == "new"
        proxy.start()
        try:
            ready = httpx.get(proxy.url + "/readyz").json()
            assert ready["routing"]["mode"] == pointer["mode"]
            r = httpx.post(proxy.url + "/search", json={"query": "while loop", "k": 3})
            assert r.status_code == 200 and r.json()["mode"] == pointer["mode"]
            audit = AuditLog(SqliteState(proxy.data)).tail(1000)
            last = next((e for e in reversed(audit) if e.get("to")), None)
            assert (last["to"]["generation"] if last else 0) == pointer["generation"]
        finally:
            proxy.stop()
    with Runtime(proxy.settings(), dict(models)) as rt:
        idx = check_indexes(rt)
        assert len(idx["new"]) == N


def test_audit_log_survives_a_torn_line_and_an_unrecorded_switch(tmp_path: Path) -> None:
    """A crash can tear the audit log's last line, or land between the pointer's rename and
    its audit entry: the log stays readable, later entries are not swallowed, and the switch
    is recorded as recovered at the next start."""
    from proxy.config import Mode
    from proxy.routing import Routing

    log = AuditLog(SqliteState(tmp_path))
    log.append({"action": "cutover", "to": {"mode": "new", "generation": 1}})
    with (tmp_path / AUDIT).open("a") as fh:
        fh.write('{"action": "rollback", "to": {"mo')  # the process died mid-write
    assert [e["action"] for e in log.tail()] == ["cutover"]
    assert log.reconcile(Routing(mode=Mode.NEW, generation=1)) is None  # in agreement
    entry = log.reconcile(Routing(mode=Mode.FUSED, generation=2))  # pointer moved, no entry
    assert entry is not None and entry["action"] == "recovered"
    assert [e["action"] for e in log.tail()] == ["cutover", "recovered"]
    assert log.tail()[-1]["to"]["generation"] == 2
    assert log.reconcile(Routing(mode=Mode.FUSED, generation=2)) is None  # recorded once
