"""The Qdrant path of a fleet: replicas sharing one migration through a real PostgreSQL
(state.url), in front of one Qdrant whose `<new>_serving` alias is the serving pointer apps
read outside the proxy.

Qdrant's local mode (`url: ":memory:"`) can't be opened by two processes, so the replicas run
in this one process, each a `Runtime` with a data dir and a `PostgresState` of its own (as
separate processes would have), served over real HTTP by `create_app` + `LiveServer`. They
reach the one Qdrant through qdrant-client's local mode, which a process opens once: every
`ServerStore` over `:memory:` gets the same client (proxy/store/server.py `make_client`), so
each replica keeps store objects of its own, as a process would, over one shared "server".

What it shows: a cutover through one replica moves the alias and the others serve its
generation within 2 s; a rollback through another moves it back and the first follows; a
replica that has not polled yet starts its control change from the pointer as another replica
left it (it never moves the alias back or undoes a cutover it has not seen); writes of the
same documents through two replicas at once leave both indexes with the same texts, from the
last batch acknowledged. (In one process, with local mode's one lock, batches rarely
interleave even without the fleet's write lock: the writes test shows the property holds, it
is not a sensitive detector of that lock missing; tests/test_fleet.py races real processes.)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.config import Settings
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.helpers import RW, LiveServer, demo_settings, wait_for

N = 24
BATCH = 16  # documents both replicas write in each round
ROUNDS = 15
KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Ack:
    sent: float
    acked: float
    tag: str


@dataclass
class Replica:
    url: str
    rt: Runtime


def replica_settings(data: Path, pg_url: str, old: str, new: str, poll_s: float) -> Settings:
    return demo_settings(
        data,
        indexes={
            "old": {"backend": "qdrant", "url": ":memory:", "collection": old},
            "new": {"backend": "qdrant", "url": ":memory:", "collection": new},
        },
        state={"url": pg_url, "poll_s": poll_s},
        server={"admin_key": KEY},
        cutover={"eval_set": None},  # forced cutovers: no labelled queries to gate on
    )


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str, cached_models: dict) -> Iterator[Callable[[float], Replica]]:
    """`start(poll_s)`: one more replica of a fleet over one PostgreSQL database and a pair
    of Qdrant collections of this test's own; the first one ingests N passages into the old
    collection and starts the migration (its worker paused: the tests switch and write)."""
    tag = uuid.uuid4().hex[:8]
    old, new = f"fleet_{tag}_v1", f"fleet_{tag}_v2"
    started: list[Replica] = []
    with ExitStack() as stack:

        def start(poll_s: float) -> Replica:
            data = tmp_path / f"replica{len(started)}"
            rt = stack.enter_context(
                Runtime(replica_settings(data, pg_url, old, new, poll_s), dict(cached_models))
            )
            if rt.state.pointer() is None and rt.store("old").info() is None:
                ingest(rt, "old", python_reference()[:N], progress=False)
                start_migration(rt, progress=False)
                rt.state.set("paused", True)
            live = stack.enter_context(LiveServer(create_app(rt)))
            started.append(Replica(live.url, rt))
            return started[-1]

        yield start


def admin(r: Replica, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    res = httpx.post(r.url + path, headers=ADMIN, json=body or {}, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()  # type: ignore[no-any-return]


def generation(r: Replica) -> int:
    res = httpx.post(r.url + "/search", json={"query": "assert statement", "k": 3}, timeout=30)
    assert res.status_code == 200, res.text
    return int(res.headers["X-Crossfade-Generation"])


def routing(r: Replica) -> dict[str, Any]:
    """The pointer as this replica holds it now (not re-read from the state store)."""
    return httpx.get(r.url + "/admin/routing", headers=ADMIN).json()  # type: ignore[no-any-return]


def alias(r: Replica) -> str | None:
    new = r.rt.store("new")
    return new.alias_target(f"{new.collection}_serving")  # type: ignore[attr-defined,no-any-return]


def test_cutover_and_rollback_move_the_alias_and_every_replica_follows(
    fleet: Callable[[float], Replica],
) -> None:
    a, b = fleet(0.2), fleet(0.2)
    old, new = a.rt.store("old").collection, a.rt.store("new").collection  # type: ignore[attr-defined]
    g = generation(a)
    assert generation(b) == g

    # (a) a forced cutover through A: the alias moves to the new collection, B serves it.
    admin(a, "/admin/cutover", {"force": True, "actor": "t"})
    t0 = time.monotonic()
    assert alias(a) == new
    wait_for(lambda: generation(b) == g + 1, 2.0, "B serves the cutover's generation")
    seen_in = time.monotonic() - t0
    assert routing(b)["mode"] == "new" and seen_in < 2.0

    # (b) a rollback through B: the alias moves back, A follows.
    back = admin(b, "/admin/rollback", {"actor": "t"})
    assert back["to"]["mode"] == "fused" and back["to"]["generation"] == g + 2
    assert alias(b) == old
    wait_for(lambda: generation(a) == g + 2, 2.0, "A serves the rollback's generation")
    assert routing(a)["mode"] == "fused"
    tail = httpx.get(a.url + "/admin/audit", headers=ADMIN).json()
    assert [e["action"] for e in tail][-2:] == ["cutover (forced)", "rollback"]


def test_a_stale_replica_never_undoes_a_switch_it_has_not_seen(
    fleet: Callable[[float], Replica],
) -> None:
    """B polls every 10 s: it has not seen A's switches when it makes its own, and the
    refresh inside every control change makes B start from A's pointer."""
    a, b = fleet(0.2), fleet(10.0)
    old, new = a.rt.store("old").collection, a.rt.store("new").collection  # type: ignore[attr-defined]
    g = routing(b)["generation"]

    admin(a, "/admin/cutover", {"force": True, "actor": "t"})
    assert alias(a) == new
    assert routing(b)["mode"] == "fused" and routing(b)["generation"] == g  # B: stale
    split = admin(b, "/admin/split", {"mode": "fused", "percent": 10, "actor": "t"})
    assert split["from"]["mode"] == "new" and split["from"]["generation"] == g + 1
    assert split["to"] == {**split["from"], "split_mode": "fused", "split_percent": 10.0,
                           "generation": g + 2}  # fmt: skip
    assert alias(b) == new  # not moved back to the old collection

    admin(a, "/admin/split", {"mode": None, "percent": 0, "actor": "t"})  # B stale again
    assert routing(b)["generation"] == g + 2
    mode = admin(b, "/admin/mode", {"mode": "new", "force": True, "actor": "t"})
    assert mode["from"]["generation"] == g + 3 and mode["from"]["split_percent"] == 0
    assert mode["to"]["mode"] == "new" and mode["to"]["generation"] == g + 4
    assert alias(b) == new
    wait_for(lambda: generation(a) == g + 4, 2.0, "A serves B's switch")

    # What a rollback restores is still what served before A's cutover: B's switches kept it.
    back = admin(b, "/admin/rollback", {"actor": "t"})
    assert back["to"]["mode"] == "fused" and back["to"]["split_percent"] == 0
    assert alias(b) == old


def test_concurrent_writes_of_the_same_documents_through_two_replicas_agree(
    fleet: Callable[[float], Replica],
) -> None:
    """Round after round, A and B write the same documents at once (one batch each). The
    write section (a PostgreSQL advisory lock, each replica its own PostgresState) applies
    one batch at a time, to both indexes, in journal order; so after every round both indexes
    hold the same texts, all from one acknowledged batch, and never from a batch that a later
    one (sent after it was acknowledged) replaced. Checked after each round, not only at the
    end: a round whose batches interleaved (old index A then B, new index B then A) would show
    there, and a later round would paper over it."""
    a, b = fleet(0.2), fleet(0.2)
    ids = [d.doc_id for d in python_reference()[:BATCH]]
    old, new = a.rt.store("old"), a.rt.store("new")
    overlapped = 0

    def write(client: httpx.Client, r: Replica, tag: str, go: threading.Barrier) -> Ack:
        docs = [{"id": d, "text": f"{tag}: an edit of document {d}"} for d in ids]
        go.wait()
        sent = time.monotonic()
        res = client.put(r.url + "/documents", headers=RW, json={"documents": docs})
        assert res.status_code == 200, res.text
        return Ack(sent, time.monotonic(), tag)

    with (
        httpx.Client(timeout=60) as to_a,
        httpx.Client(timeout=60) as to_b,
        ThreadPoolExecutor(2) as pool,
    ):
        for i in range(ROUNDS):
            go = threading.Barrier(2)
            acks = [
                f.result()
                for f in [
                    pool.submit(write, to_a, a, f"A{i}", go),
                    pool.submit(write, to_b, b, f"B{i}", go),
                ]
            ]
            texts = {
                side: {d: v["text"] for d, v in s.retrieve(ids, ["text"]).items()}
                for side, s in (("old", old), ("new", new))
            }
            assert texts["old"] == texts["new"], (i, texts)
            tags = {t.split(":")[0] for t in texts["old"].values()}
            assert len(tags) == 1, (i, tags)  # one batch, whole, last in both indexes
            # The batches no other follows in real time (none sent after it was
            # acknowledged): the last applied is one of them.
            last = {x.tag for x in acks if not any(y.sent > x.acked for y in acks)}
            assert tags <= last, (i, tags, acks)
            x, y = acks
            overlapped += x.sent < y.acked and y.sent < x.acked
    assert overlapped >= ROUNDS // 2  # the writes did race, in most rounds
    # Both replicas' searches find the last text (fused: both indexes).
    final = texts["old"][ids[0]]
    for r in (a, b):
        hits = httpx.post(r.url + "/search", json={"query": final, "k": 1}).json()["results"]
        assert hits[0]["doc_id"] == ids[0]
