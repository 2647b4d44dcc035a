"""A fleet through a whole migration, with real processes: 3 `crossfade serve` replicas and 2
`crossfade worker` processes, each with a data dir of its own, sharing one migration through
a real PostgreSQL (state.url), in front of one real Chroma server, the new model hosted
(Infinity, so re-embeds are billed), 16 clients searching and editing over the replicas.

What it shows: a control change through one replica is in force on the others (status and
headers); a pause through one stops every worker; a replica and a worker killed with SIGKILL
mid-backfill lose nothing (the backfill completes, `crossfade verify` is clean, every
document is in both indexes with its last acknowledged text); documents embedded more than
once stay under 2% of the corpus and the spend is one pass; a cutover through one replica
under load fails no request and every replica serves the new generation within 2 s.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import chromadb

from loadtest.fleet import (
    Clients,
    Fleet,
    admin,
    backfill,
    corpus,
    generation_of,
    reembedded,
    status,
)
from loadtest.harness import wait_for

# Enough documents that the kill at 30% lands mid-backfill, with batches still to come
# (under way at 10%: the pause's batches in flight end below 30%); the bounds below are
# shares of it.
DOCS = 400
CLIENTS = 16


def test_a_fleet_migrates_as_one(
    tmp_path: Path, pg_url: str, chroma_server: Any, infinity: Any
) -> None:
    name = f"fleet{uuid.uuid4().hex[:8]}"
    # A per-worker rate cap keeps the backfill long enough to kill processes in the middle.
    fleet = Fleet(tmp_path, pg_url, chroma_server.url, infinity.url, {"max_docs_per_s": 15}, name)
    docs = corpus(DOCS)
    fleet.setup(docs)
    clients: Clients | None = None
    try:
        # Members of a kind start together, then each is waited for (a start-up is mostly
        # imports and models).
        a, b, c = replicas = [fleet.add("serve").start(wait=False) for _ in range(3)]
        for r in replicas:
            r.wait_ready()

        # -- control through A, observed on B and C ----------------------------------------
        backfill(a.url, "pause")  # before any worker runs: none may embed a document
        workers = [fleet.add("worker").start(wait=False) for _ in range(2)]
        for w in workers:
            w.wait_ready()
        time.sleep(2)
        assert reembedded(b.url) == 0
        assert status(c.url)["control"]["paused"] is True
        gen = generation_of(a.url)
        admin(a.url, "POST", "/admin/split", {"mode": "shadow", "percent": 10, "actor": "t"})
        t0 = time.monotonic()
        for r in (b, c):
            wait_for(lambda r=r: generation_of(r.url) == gen + 1, 2.0, f"{r.name} split")
            assert status(r.url)["routing"]["split_percent"] == 10
        seen_in = time.monotonic() - t0
        admin(b.url, "POST", "/admin/split", {"mode": None, "percent": 0, "actor": "t"})
        wait_for(lambda: generation_of(c.url) == gen + 2, 2.0, "split cleared on C")
        assert seen_in < 2.0

        # -- load, backfill, a pause through A, kill -9 of a worker and a replica ----------
        owned = [[d["id"] for d in docs[i * 3 : i * 3 + 3]] for i in range(CLIENTS)]
        queries = [d["text"][:60] for d in docs[100::25]]
        clients = Clients(lambda: [m.url for m in fleet.replicas()], queries, owned).start()
        backfill(b.url, "resume")
        wait_for(lambda: reembedded(a.url) >= DOCS // 10, 120, "backfill under way")
        backfill(a.url, "pause")
        # Each worker finishes the batch in flight (its requests are billed: written, not
        # thrown away), then says it is paused in its heartbeat, seen through B ...
        wait_for(
            lambda: (
                [m["state"] for m in status(b.url)["fleet"] if m["role"] == "worker"]
                == ["paused", "paused"]
            ),
            60,
            "both workers report paused",
        )
        # ... and re-embeds nothing more.
        held = reembedded(c.url)
        time.sleep(3)
        assert reembedded(b.url) == held, "a worker kept re-embedding after the pause"
        backfill(c.url, "resume")
        killed_at = wait_for(
            lambda: (n := reembedded(a.url)) >= DOCS * 0.3 and n, 180, "30% re-embedded"
        )
        workers[1].kill9()
        c.kill9()
        c.start()  # restarted on its data dir: its sidecar catches up with the fleet's writes
        cov = wait_for(
            lambda: (
                status(a.url)["indexes"]["new"]["coverage"] == 1.0
                and status(a.url)["queue"]["total"] == 0
            ),
            300,
            "backfill to 100% with one worker left",
            interval=1,
        )
        assert cov
        print(f"fleet: paused at {held}, killed at {killed_at} of {DOCS}")

        # -- cutover through A under load: every replica on the new generation in 2 s ---------
        before = generation_of(a.url)
        out = admin(a.url, "POST", "/admin/cutover", {"force": True, "actor": "t"})
        switched = time.monotonic()
        assert out["audit"]["to"]["generation"] == before + 1
        lag = {}
        for r in (b, c):
            wait_for(lambda r=r: generation_of(r.url) == before + 1, 2.0, f"{r.name} cutover")
            lag[r.name] = time.monotonic() - switched
        time.sleep(3)
        clients.stop()
        assert clients.failures == [], clients.failures[:5]
        assert max(lag.values()) < 2.0
        assert clients.requests > 200 and clients.generations
        print(f"fleet: {clients.requests} requests, {clients.failovers} failovers, lag {lag}")

        # -- nothing lost, verify clean, one pass ----------------------------------------------
        wait_for(lambda: status(a.url)["write_journal"]["pending"] == 0, 60, "journal drained")
        final = status(b.url)
        assert final["routing"]["mode"] == "new"
        verified = fleet.cli("verify")
        assert '"ok": true' in verified, verified[-2000:]
        client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
        expected = {d["id"]: d["text"] for d in docs} | clients.last_text
        for side in ("old", "new"):
            col = client.get_collection(f"{name}_{side}")
            got = col.get(ids=list(expected), include=["documents"])
            held_texts = dict(zip(got["ids"], got["documents"] or [], strict=True))
            assert set(held_texts) == set(expected), f"{side}: documents lost"
            wrong = [d for d, t in expected.items() if held_texts[d] != t]
            assert wrong == [], f"{side}: not the last acknowledged text: {wrong[:5]}"
        dup = final["reembedded"]
        assert dup["duplicates"] <= 0.02 * DOCS, dup
        # Spend: the hosted model bills characters here (Infinity's usage); every document not
        # edited before its re-embed was re-embedded once, none twice beyond the duplicates.
        edited = {d for ids in owned for d in ids}
        untouched = sum(len(d["text"]) for d in docs if d["id"] not in edited)
        everything = sum(len(d["text"]) for d in docs)
        tokens = final["spend"]["tokens"]
        print(f"fleet: spend {tokens} tokens, one pass {everything}, duplicates {dup}")
        assert untouched <= tokens <= everything * 1.02
    finally:
        if clients is not None:
            clients.stop()
        fleet.stop()
