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
left it (it never moves the alias back or undoes a cutover it has not seen); writes of one
document through two replicas at once leave both indexes with the same text, the last one
acknowledged.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
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
KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}


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


def test_concurrent_writes_of_one_document_through_two_replicas_agree(
    fleet: Callable[[float], Replica],
) -> None:
    """Writes through A and B at once, one document, many rounds: the write section (a
    PostgreSQL advisory lock) applies one batch at a time in journal order, so both indexes
    end with the same text: one that was acknowledged, and none that a later write (sent
    after it was acknowledged) replaced."""
    a, b = fleet(0.2), fleet(0.2)
    doc = python_reference()[0].doc_id
    rounds = 12
    acks: list[tuple[float, float, str]] = []  # (sent, acknowledged, text)
    lock = threading.Lock()
    failures: list[str] = []
    start = threading.Barrier(2)

    def writer(r: Replica, name: str) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            for i in range(rounds):
                text = f"written through {name}, round {i}: an edit of the document"
                sent = time.monotonic()
                res = client.put(
                    r.url + "/documents",
                    headers=RW,
                    json={"documents": [{"id": doc, "text": text}]},
                )
                done = time.monotonic()
                if res.status_code != 200:
                    failures.append(f"{name} {i}: {res.status_code} {res.text}")
                    continue
                with lock:
                    acks.append((sent, done, text))

    threads = [threading.Thread(target=writer, args=(r, n)) for r, n in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(acks) == 2 * rounds
    # The writes did race: some write through A was in flight while one through B was.
    through = {n: [x for x in acks if x[2].startswith(f"written through {n}")] for n in "AB"}
    assert any(x[0] < y[1] and y[0] < x[1] for x in through["A"] for y in through["B"])

    texts = {
        (name, side): r.rt.store(side).retrieve([doc], ["text"])[doc]["text"]
        for r, name in ((a, "A"), (b, "B"))
        for side in ("old", "new")
    }
    assert len(set(texts.values())) == 1, texts
    final = texts["A", "old"]
    # The writes no later write follows in real time (none sent after it was acknowledged):
    # the last applied is one of them. Two threads: at most one from each.
    last = [x for x in acks if not any(y[0] > x[1] for y in acks)]
    assert final in {x[2] for x in last}, (final, last)
    # Both replicas' readers see it: a search with the text (fused: both indexes) finds it.
    for r in (a, b):
        hits = httpx.post(r.url + "/search", json={"query": final, "k": 1}).json()["results"]
        assert hits[0]["doc_id"] == doc
