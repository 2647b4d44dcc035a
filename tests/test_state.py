"""The StateStore contract (proxy/state/__init__.py), held by both implementations on real
databases: SQLite files under a temp dir, and a real PostgreSQL (a database per test on the
session's server). Then what only a fleet needs, on PostgreSQL: two stores (and two processes)
on one database never hand one id twice, never lose an increment, and never hold one section
at once; and a store whose server stops answers StateUnavailable, naming where but no
password."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.servers import start_postgres
from proxy.routing import Mode, Routing
from proxy.state import BACKFILL, HIT, WRITES, Pointer, StateStore, StateUnavailable
from proxy.state.postgres import PostgresState, where
from proxy.state.sqlite import SqliteState


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    store: StateStore
    if request.param == "sqlite":
        store = SqliteState(tmp_path, retry_base_s=0.5, retry_max_s=2.0)
    else:
        url = request.getfixturevalue("pg_url")
        store = PostgresState(url, retry_base_s=0.5, retry_max_s=2.0, connect_timeout_s=3.0)
    yield store
    store.close()


# --- the re-embed queue ---------------------------------------------------------------------
def test_enqueue_dedupes_and_moves_up(state: StateStore) -> None:
    assert state.enqueue(["b1", "b2", "b1"], BACKFILL) == 2
    assert state.enqueue(["b2", "h1"], HIT) == 1  # b2 moves up, h1 is new
    assert state.enqueue(["h1"], BACKFILL) == 0  # never moves down
    assert state.enqueue([], HIT) == 0
    assert state.depth() == {"hits": 2, "backfill": 1, "total": 3}
    assert state.claim(10, 60) == ["b2", "h1", "b1"]  # hits first, then by enqueue time


def test_claim_order_and_leases(state: StateStore) -> None:
    state.enqueue(["c", "a", "b"], BACKFILL)  # one call: the caller's order, not sorted
    state.enqueue(["z", "y"], HIT)
    assert state.claim(3, 60) == ["z", "y", "c"]
    assert state.claim(3, 60) == ["a", "b"]  # a claimed id is not handed out twice
    assert state.claim(3, 60) == []
    state.release(["y", "a"])
    assert state.claim(5, 60) == ["y", "a"]
    state.done(["z", "y", "c"])
    assert state.depth() == {"hits": 0, "backfill": 2, "total": 2}
    assert state.claim(1, 60) == []  # a and b still held


def test_expired_lease_comes_back(state: StateStore) -> None:
    state.enqueue(["x", "w"], HIT)
    assert state.claim(1, 0.05) == ["x"]
    assert state.claim(5, 60) == ["w"]
    time.sleep(0.1)  # x's holder "died": its lease ran out
    assert state.claim(5, 60) == ["x"]
    assert state.claim(5, 60) == []


def test_claim_named_ids(state: StateStore) -> None:
    """A Ray batch claims its partition's ids: queued or not, never one another holds."""
    state.enqueue(["a", "b"], BACKFILL)
    assert state.claim(1, 60) == ["a"]  # a worker holds a
    assert state.claim_ids(["c", "a", "b"], 60) == ["c", "b"]  # c queued and held at once
    assert state.claim(5, 60) == []  # none of them handed to a worker
    assert state.claim_ids(["b", "c"], 60) == []  # a retried batch: still held, left alone
    assert state.depth()["backfill"] == 3
    state.done(["c"])
    assert state.claim_ids(["c"], 0.05) == ["c"]  # done, then named again: queued and held
    time.sleep(0.1)
    assert state.claim_ids(["c"], 60) == ["c"]  # its lease ran out: taken again
    assert state.claim_ids([], 60) == []


def test_clear_queue(state: StateStore) -> None:
    state.enqueue(["a", "b"], HIT)
    state.enqueue(["c"], BACKFILL)
    state.clear_queue()
    assert state.depth() == {"hits": 0, "backfill": 0, "total": 0}
    assert state.claim(5, 60) == []
    assert state.enqueue(["a"], BACKFILL) == 1


# --- switches, counters ---------------------------------------------------------------------
def test_kv(state: StateStore) -> None:
    assert state.get("paused") is None
    assert state.get("paused", False) is False
    value = {"on": True, "rate": 2.5, "n": 3, "names": ["a", "é"], "nested": {"x": None}}
    state.set("switch", value)
    assert state.get("switch") == value
    state.set("switch", [1, "two"])
    assert state.get("switch") == [1, "two"]
    state.set("flag", False)
    assert state.get("flag", True) is False  # a stored falsy value, not the default
    state.delete("switch")
    state.delete("absent")
    assert state.get("switch", "default") == "default"


def test_counts(state: StateStore) -> None:
    assert state.counts("spend") == {}
    assert state.add_counts("spend", {"tokens": 10, "usd": 0.25}) == {"tokens": 10.0, "usd": 0.25}
    assert state.add_counts("spend", {"tokens": 5}) == {"tokens": 15.0, "usd": 0.25}
    assert state.add_counts("other", {"n": 1}) == {"n": 1.0}
    assert state.counts("spend") == {"tokens": 15.0, "usd": 0.25}
    assert state.add_counts("spend", {}) == {"tokens": 15.0, "usd": 0.25}


def test_reembedded(state: StateStore) -> None:
    assert state.reembedded().total == 0
    state.record_reembedded(["a", "b"])
    state.record_reembedded(["a", "c", "c"])  # an id twice in one batch counts twice
    state.record_reembedded([])
    r = state.reembedded()
    assert (r.total, r.distinct, r.duplicates) == (5, 3, 2)
    state.reset_reembedded()
    assert state.reembedded() == type(r)(0, 0)


# --- documents that can't be re-embedded ----------------------------------------------------
def test_unembeddable(state: StateStore) -> None:
    assert state.unembeddable() == {"count": 0, "excluded": 0, "ids": []}
    state.mark_unembeddable([("d2", "no text"), ("d1", "empty"), ("d3", "no text")])
    state.mark_unembeddable([("d1", "still empty")])  # why updated
    state.mark_unembeddable([])
    assert state.unembeddable_ids() == {"d1", "d2", "d3"}
    assert state.unembeddable(shown=2) == {
        "count": 3,
        "excluded": 0,
        "ids": [{"doc_id": "d1", "why": "still empty"}, {"doc_id": "d2", "why": "no text"}],
    }
    assert state.exclude(["d3", "nope", "d1", "d3"], "alice") == ["d3", "d1"]
    state.mark_unembeddable([("d3", "again")])  # marking again keeps the exclusion
    u = state.unembeddable()
    assert (u["count"], u["excluded"]) == (1, 2)
    assert u["ids"] == [{"doc_id": "d2", "why": "no text"}]
    state.forget_unembeddable(["d2", "d3", "nope"])
    state.forget_unembeddable([])
    assert state.unembeddable_ids() == {"d1"}
    assert state.unembeddable() == {"count": 0, "excluded": 1, "ids": []}


def test_unembeddable_byte_order(state: StateStore) -> None:
    state.mark_unembeddable([("b", "x"), ("B", "x"), ("a", "x"), ("_", "x")])
    assert [i["doc_id"] for i in state.unembeddable()["ids"]] == ["B", "_", "a", "b"]


# --- the pointer and the audit log ----------------------------------------------------------
def test_pointer(state: StateStore) -> None:
    assert state.pointer() is None
    first = Pointer(Routing(mode=Mode.OLD, generation=1))
    state.save_pointer(first)
    assert state.pointer() == first
    split = Routing(mode=Mode.NEW, split_mode=Mode.OLD, split_percent=12.5, generation=2)
    state.save_pointer(Pointer(split, rollback_to=first.routing))
    assert state.pointer() == Pointer(split, rollback_to=first.routing)


def test_audit(state: StateStore) -> None:
    assert state.audit_tail() == []
    for i in range(5):
        state.audit_append({"action": "switch", "i": i, "at": Path("/p")})  # str() if not JSON
    assert [e["i"] for e in state.audit_tail(3)] == [2, 3, 4]
    assert [e["i"] for e in state.audit_tail(None)] == [0, 1, 2, 3, 4]
    assert state.audit_tail()[0] == {"action": "switch", "i": 0, "at": "/p"}


# --- the change log and the fleet -----------------------------------------------------------
def test_changes(state: StateStore) -> None:
    assert state.changes_since(0).doc_ids == []
    assert state.changes_since(0).seq == 0
    state.log_changes(["a", "b", "a"])
    state.log_changes(["c"])
    state.log_changes([])
    everything = state.changes_since(0)
    assert (everything.doc_ids, everything.seq) == (["a", "b", "c"], 4)
    page = state.changes_since(0, limit=2)
    assert (page.doc_ids, page.seq) == (["a", "b"], 2)
    page = state.changes_since(page.seq, limit=2)
    assert (page.doc_ids, page.seq) == (["a", "c"], 4)
    page = state.changes_since(page.seq)
    assert (page.doc_ids, page.seq) == ([], 4)
    assert state.changes_since(100).seq == 100  # ahead of the log: kept
    assert state.changes_since(0).complete


def test_pruned_changes(state: StateStore) -> None:
    assert state.prune_changes(10) == 0  # nothing to prune
    for i in range(5):
        state.log_changes([f"d{i}"])
    assert state.prune_changes(2) == 3  # keeps d3, d4
    behind, caught_up = state.changes_since(0), state.changes_since(3)
    assert (behind.doc_ids, behind.complete) == (["d3", "d4"], False)
    assert (caught_up.doc_ids, caught_up.complete) == (["d3", "d4"], True)
    assert state.prune_changes(2) == 0  # idempotent
    assert not state.changes_since(2).complete and state.changes_since(5).complete


def test_members(state: StateStore) -> None:
    assert state.members() == []
    state.beat("serve a", "serve", {"state": "ok", "at": Path("/x")})
    time.sleep(0.01)
    state.beat("worker b", "worker", {"rate": 1.5})
    state.beat("worker b", "worker", {"rate": 2.0})  # an upsert, not a second member
    members = state.members()
    assert [(m.name, m.role) for m in members] == [("worker b", "worker"), ("serve a", "serve")]
    assert members[0].info == {"rate": 2.0}
    assert members[1].info == {"state": "ok", "at": "/x"}
    assert all(0 <= m.age_s < 5 for m in members)
    assert state.members(max_age_s=-1) == []  # none beat in the future


# --- the write journal ----------------------------------------------------------------------
def test_journal(state: StateStore) -> None:
    j = state.journal
    assert j.pending() == []
    assert j.status(now=100.0) == {
        "pending": 0,
        "retrying": 0,
        "oldest_age_s": 0.0,
        "max_attempts": 0,
        "next_retry_in_s": None,
        "failing_batch": None,
        "last_error": None,
    }
    t0 = time.time()
    b1 = j.begin("upsert", [{"id": "a", "text": "x"}])
    b2 = j.begin("delete", ["b", "c"])
    b3 = j.begin("upsert", [{"id": "d", "text": "y"}])
    assert b1 < b2 < b3
    assert [(b.batch, b.op, b.items) for b in j.pending()] == [
        (b1, "upsert", [{"id": "a", "text": "x"}]),
        (b2, "delete", ["b", "c"]),
        (b3, "upsert", [{"id": "d", "text": "y"}]),
    ]
    assert all(t0 - 1 <= b.begun_at <= time.time() + 1 for b in j.pending())

    j.applied(b1)
    assert [b.batch for b in j.pending()] == [b2, b3]
    assert [b.batch for b in j.pending(unflushed=True)] == [b1, b2, b3]

    vectors = {"new": [[0.1, -2.5e-8, 3.0]]}
    assert j.retry_later(b2, "old down", ["old"]) == 0.5  # backoff doubles up to the max
    assert j.retry_later(b2, "old down", ["old"]) == 1.0
    assert j.retry_later(b2, "old down", ["old"]) == 2.0
    assert j.retry_later(b2, "new down", ["new"], vectors) == 2.0
    assert j.retry_later(b3, "old down", ["old", "new"]) == 0.5
    failed = j.pending()[0]
    assert (failed.batch, failed.attempts, failed.error) == (b2, 4, "new down")
    assert (failed.sides_left, failed.vectors) == (["new"], vectors)
    assert failed.next_at == pytest.approx(time.time() + 2.0, abs=1.0)
    untried = j.pending(unflushed=True)[0]
    assert (untried.attempts, untried.sides_left, untried.vectors) == (0, None, None)

    now = time.time()
    s = j.status(now=now)
    assert s["pending"] == 2 and s["retrying"] == 2 and s["max_attempts"] == 4
    assert s["failing_batch"] == b2 and s["last_error"] == "new down"
    assert 0 <= s["oldest_age_s"] < 5
    assert 0 <= s["next_retry_in_s"] <= 2.0

    assert j.forget_applied() == 1
    assert [b.batch for b in j.pending(unflushed=True)] == [b2, b3]
    j.applied(b2)
    j.applied(b3)
    assert j.status()["pending"] == 0
    assert j.forget_applied() == 2
    assert j.pending(unflushed=True) == []
    assert j.begin("delete", ["e"]) > b3  # ids never reused


def test_exclusive_in_one_process(state: StateStore) -> None:
    inside, overlap = [0], [0]

    def work() -> None:
        for _ in range(20):
            with state.exclusive(WRITES):
                inside[0] += 1
                overlap[0] = max(overlap[0], inside[0])
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap[0] == 1
    with state.exclusive(WRITES), state.exclusive("control"):
        pass  # sections are independent: holding one doesn't block another


def test_shared_flag_and_where(state: StateStore, tmp_path: Path) -> None:
    state.ping()
    if isinstance(state, SqliteState):
        assert (state.shared, state.where) == (False, str(tmp_path))
    else:
        assert state.shared is True
        assert state.where.startswith("postgresql:///t_") and "?host=/" in state.where


# --- PostgreSQL: a fleet on one database ----------------------------------------------------
def test_where_names_no_password() -> None:
    assert (
        where("postgresql://app:hunter2@db.example:6543/mig") == "postgresql://db.example:6543/mig"
    )
    assert where("postgres://app:hunter2@db.example/mig?sslmode=require") == (
        "postgresql://db.example:5432/mig"
    )
    assert where("host=/run/pg user=app password=hunter2 dbname=mig") == (
        "postgresql:///mig?host=/run/pg"
    )
    with pytest.raises(ValueError) as e:
        where("postgresql://app:hunter2@db/mig?bogus=1")
    assert "hunter2" not in str(e.value)


@pytest.fixture
def two(pg_url: str) -> Iterator[tuple[PostgresState, PostgresState]]:
    a, b = PostgresState(pg_url, pool_size=4), PostgresState(pg_url, pool_size=4)
    yield a, b
    a.close()
    b.close()


def test_fleet_claims_each_id_once(two: tuple[PostgresState, PostgresState]) -> None:
    ids = [f"d{i:03d}" for i in range(500)]
    two[0].enqueue(ids, BACKFILL)
    claimed: list[list[str]] = [[] for _ in range(4)]

    def worker(i: int) -> None:
        store = two[i % 2]
        while batch := store.claim(7, 60):
            claimed[i].extend(batch)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [d for c in claimed for d in c]
    assert len(every) == len(set(every)) == 500
    assert set(every) == set(ids)
    assert sum(1 for c in claimed if c) >= 2  # they did run side by side


def test_fleet_counts_add_up(two: tuple[PostgresState, PostgresState]) -> None:
    seen: list[float] = []

    def add(i: int) -> None:
        for _ in range(50):
            seen.append(two[i % 2].add_counts("spend", {"calls": 1, "usd": 0.5})["calls"])

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert two[0].counts("spend") == two[1].counts("spend") == {"calls": 400.0, "usd": 200.0}
    assert max(seen) == 400.0


def test_fleet_exclusive_across_stores(two: tuple[PostgresState, PostgresState]) -> None:
    a, b = two
    a_in, a_go, b_in = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def hold_a() -> None:
        with a.exclusive(WRITES):
            a_in.set()
            a_go.wait(10)
            order.append("a leaves")

    def enter_b() -> None:
        a_in.wait(10)
        with b.exclusive(WRITES):
            order.append("b enters")
            b_in.set()

    threads = [threading.Thread(target=hold_a), threading.Thread(target=enter_b)]
    for t in threads:
        t.start()
    assert a_in.wait(10)
    assert not b_in.wait(0.3)  # B waits on A's advisory lock (its local lock is its own)
    with b.exclusive("control"):
        pass  # another section is free meanwhile
    a_go.set()
    for t in threads:
        t.join(10)
    assert order == ["a leaves", "b enters"]


def _hold_writes(url: str, held: Any, leave: Any, left_at: Any) -> None:
    """In a second process: hold WRITES until told to leave; note when it did."""
    store = PostgresState(url)
    with store.exclusive(WRITES):
        held.set()
        leave.wait(20)
        left_at.value = time.time()
    store.close()


def test_fleet_exclusive_across_processes(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    held, leave, left_at = ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
    child = ctx.Process(target=_hold_writes, args=(pg_url, held, leave, left_at))
    child.start()
    store = PostgresState(pg_url)
    try:
        assert held.wait(30), "the second process never took the lock"
        entered = threading.Event()
        entered_at = [0.0]

        def enter() -> None:
            with store.exclusive(WRITES):
                entered_at[0] = time.time()
                entered.set()

        t = threading.Thread(target=enter)
        t.start()
        assert not entered.wait(0.3)  # held by the other process
        leave.set()
        assert entered.wait(10)
        t.join(10)
        child.join(10)
        assert child.exitcode == 0
        assert 0 < left_at.value <= entered_at[0]
    finally:
        leave.set()
        child.join(10)
        store.close()


def _eventually(call: Any, within_s: float = 15.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except StateUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_unreachable_raises_state_unavailable(pg_dir: Path) -> None:
    server = start_postgres(pg_dir)
    # Trust auth ignores the password: it is here to show it never reaches a message.
    url = server.get_uri().replace("postgres:@", "postgres:hunter2@")
    assert "hunter2" in url
    store = PostgresState(url, connect_timeout_s=1.0)
    try:
        store.set("k", 1)
        assert "hunter2" not in store.where
        server.cleanup()  # the server stops
        for call in (store.ping, lambda: store.get("k")):
            t0 = time.monotonic()
            with pytest.raises(StateUnavailable) as e:
                call()
            assert time.monotonic() - t0 < 1.0 + 2.0
            message = str(e.value)
            assert store.where in message and "unreachable" in message
            assert "hunter2" not in message and "password" not in message
        with pytest.raises(StateUnavailable) as e:
            PostgresState(url, connect_timeout_s=1.0)
        assert "hunter2" not in str(e.value)

        t0 = time.monotonic()
        server = start_postgres(pg_dir)  # back up
        assert server.get_uri().replace("postgres:@", "postgres:hunter2@") == url
        assert _eventually(lambda: store.get("k")) == 1  # the same store, new connections
        print(f"reconnected {time.monotonic() - t0:.1f} s after the restart began")
    finally:
        store.close()
        server.cleanup()
