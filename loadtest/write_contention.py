"""`make bench-writes`: /search p99 with 40 slow document writes queued, against its p99
without them, measured in one run (bounded, 127.0.0.1 only).

The demo migration (old: local paraphrase-MiniLM-L3; new: `kind: openai`, Infinity serving
all-MiniLM-L6-v2 behind a FaultProxy), fully backfilled, served fused by `crossfade serve`
(a child process). The slow model: the FaultProxy holds every /embeddings request of at least
`--batch` texts for `--delay-s` seconds before passing it on, so a write of `--batch`
documents waits that long for its new-model vectors, while the searches' query embeddings
(one text each, micro-batched at most `--searchers` together, fewer than `--batch`) pass at
once. That is the case the write path must survive: a slow model holds up the writes that
need it, and nothing else. The written texts are short (a passage's first line): the model is
slow by latency, not by work, so the benchmark measures the proxy's queueing and not the
model server computing beside the searches on the same cores (with whole passages, Infinity
embedding four 8-passage batches at once on this 2-core machine timed query embeddings out).

Phases, each `--searches` searches from `--searchers` concurrent clients, every query text
unique (no query-cache hits):

  A   no writes;
  B   `--writes` (40) concurrent PUT /documents kept outstanding the whole phase (a writer
      whose write returns sends the next), so the write threads are busy and the rest queue;
  A'  no writes again, once B's writes have drained.

Baseline = A and A' pooled (drift on a shared machine falls on both sides). The model server
shares these two cores: in B it embeds every write's documents, work a hosted model does
elsewhere. So that the ratio measures what queued writes cost the proxy, not the model
server's share of the CPU, A and A' carry the same model-server work (`--model-load`, on by
default): as many clients as the proxy has write threads each send one batch of `--batch`
texts straight to the model server every `--delay-s`, the rate B's writes reach it at. Both
ratios are reported; `--no-model-load` measures without it. Exit 1 if
p99(B) / p99(baseline) > `--max-ratio` (1.5), if a search failed, or if B's writes were not
slow (each must take at least `--delay-s`) or not all acknowledged.

    python loadtest/write_contention.py [--writes 40] [--searches 1000] [--delay-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.chaos import (  # noqa: E402
    add_run_args,
    percentiles,
    prepare,
    queries_from,
    serve,
    stop,
    write_config,
    write_headers,
)
from loadtest.harness import free_port  # noqa: E402
from loadtest.servers import SERVED_NAME, FaultProxy, Infinity, infinity_installed  # noqa: E402
from proxy.demo import python_reference  # noqa: E402


async def searches(
    http: httpx.AsyncClient, qs: list[str], n: int, clients: int, tag: str
) -> dict[str, Any]:
    """`n` fused searches from `clients` concurrent clients, each query text unique."""
    ms: list[float] = []
    spans: list[tuple[float, float]] = []  # (monotonic start, end) of each answered search
    failed: list[str] = []
    degraded = 0
    left = iter(range(n))
    t0 = time.monotonic()

    async def client(c: int) -> None:
        nonlocal degraded
        rng = random.Random(f"{tag}-{c}")
        for i in left:
            body = {"query": f"{rng.choice(qs)} {tag}-{i}", "k": 10, "with_text": False}
            t, start = time.perf_counter(), time.monotonic()
            try:
                r = await http.post("/search", json=body)
            except httpx.HTTPError as e:
                failed.append(repr(e))
                continue
            if r.status_code != 200:
                failed.append(f"{r.status_code}: {r.text[:200]}")
                continue
            ms.append((time.perf_counter() - t) * 1000)
            spans.append((start, time.monotonic()))
            degraded += bool(r.headers.get("x-crossfade-degraded"))

    await asyncio.gather(*(client(c) for c in range(clients)))
    return {
        "ms": ms,
        "spans": spans,
        "window": (t0, time.monotonic()),
        "failed": failed,
        "degraded": degraded,
        "seconds": round(time.monotonic() - t0, 1),
    }


class ModelLoad:
    """`clients` tasks, each sending one batch of `batch` texts straight to the model server
    every `every_s` (what B's writes make it embed), until `stop()`."""

    def __init__(self, url: str, clients: int, batch: int, every_s: float, texts: list[str]):
        self.url, self.clients, self.batch, self.every_s = url, clients, batch, every_s
        self.texts, self.sent = texts, 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, http: httpx.AsyncClient) -> None:
        self._tasks = [asyncio.create_task(self._client(http, c)) for c in range(self.clients)]

    async def _client(self, http: httpx.AsyncClient, c: int) -> None:
        rng = random.Random(c)
        while True:
            await asyncio.sleep(self.every_s)
            texts = [f"{rng.choice(self.texts)} [load {c}-{self.sent}]" for _ in range(self.batch)]
            await http.post(self.url, json={"model": SERVED_NAME, "input": texts})
            self.sent += 1

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def first_line(text: str) -> str:
    return next(x for x in text.splitlines() if x.strip())[:200]


class Writers:
    """`n` writers, each keeping one PUT /documents of `batch` documents outstanding until
    `stop()`; every write's latency and status are kept."""

    def __init__(
        self, http: httpx.AsyncClient, docs: list[Any], n: int, batch: int, hdrs: dict[str, str]
    ) -> None:
        self.http, self.docs, self.n, self.batch, self.hdrs = http, docs, n, batch, hdrs
        self.outstanding = 0
        self.done: list[tuple[float, int]] = []  # (seconds, status)
        self.landed: list[float] = []  # monotonic time each write was answered
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer(w)) for w in range(self.n)]

    async def _writer(self, w: int) -> None:
        k = 0
        while not self._stop.is_set():
            k += 1
            picked = [self.docs[(w * self.batch + j) % len(self.docs)] for j in range(self.batch)]
            body = {
                "documents": [
                    {
                        "id": d.doc_id,
                        "text": f"{first_line(d.text)} [write {w}-{k}]",
                        "metadata": {**d.metadata, "writer": w, "k": k},
                    }
                    for d in picked
                ]
            }
            self.outstanding += 1
            t = time.perf_counter()
            try:
                r = await self.http.put("/documents", json=body, headers=self.hdrs)
                self.done.append((time.perf_counter() - t, r.status_code))
                self.landed.append(time.monotonic())
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                self.errors.append(repr(e))
            finally:
                self.outstanding -= 1

    async def stop(self) -> None:
        """No new writes; wait for those outstanding to be answered."""
        self._stop.set()
        await asyncio.gather(*self._tasks)


def attribution(
    a1: dict[str, Any],
    b: dict[str, Any],
    a2: dict[str, Any],
    landed: list[float],
    fault: FaultProxy,
    batch: int,
    near_s: float = 0.5,
) -> dict[str, Any]:
    """What B's slowest searches coincided with: the query embeddings' time at the model
    server (Infinity, on the same cores) in each phase, and how many of B's slowest 1% were
    in flight within `near_s` of a write being answered (the moment it is applied: the old
    model's embedding, both indexes' upserts and flushes)."""

    def query_ms(window: tuple[float, float]) -> dict[str, Any]:
        lo, hi = window
        return percentiles(
            [sec * 1000 for t, n, sec in fault.timings if n < batch and lo <= t <= hi]
        )

    slow_cut = float(np.percentile(b["ms"], 99)) if b["ms"] else 0.0
    slow = [sp for sp, ms in zip(b["spans"], b["ms"], strict=True) if ms >= slow_cut]
    near = sum(1 for s0, s1 in slow if any(s0 - near_s <= t <= s1 + near_s for t in landed))
    return {
        "model_server_query_ms": {
            "without_writes": query_ms(a1["window"]),
            "with_writes_queued": query_ms(b["window"]),
            "without_writes_again": query_ms(a2["window"]),
        },
        "slowest_1pct_of_b": len(slow),
        "of_them_within_0.5s_of_a_write_landing": near,
        "writes_landed_during_b": sum(1 for t in landed if b["window"][0] <= t <= b["window"][1]),
    }


async def bench(url: str, fault: FaultProxy, args: Any) -> dict[str, Any]:
    docs = python_reference()
    qs = queries_from(docs)
    hdrs = write_headers(args.api_key)
    limits = httpx.Limits(max_connections=args.writes + args.searchers + 4)
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await searches(http, qs, 40, args.searchers, "warm")  # connections, first batches
        fault.delay_s = args.delay_s  # the model is slow for document batches from here on
        texts = [first_line(d.text) for d in docs]
        load = ModelLoad(fault.upstream + "/embeddings", args.write_threads, args.batch,
                         args.delay_s, texts)  # fmt: skip
        if args.model_load:
            load.start(http)
        a1 = await searches(http, qs, args.searches, args.searchers, "a1")
        await load.stop()
        writers = Writers(http, docs, args.writes, args.batch, hdrs)
        writers.start()
        await asyncio.sleep(1.0)  # every writer has sent its first write
        queued_at_start = writers.outstanding
        b = await searches(http, qs, args.searches, args.searchers, "b")
        queued_at_end = writers.outstanding
        answered_during_b = len(writers.done)
        t = time.monotonic()
        await writers.stop()
        drain_s = time.monotonic() - t
        if args.model_load:
            load.start(http)
        a2 = await searches(http, qs, args.searches, args.searchers, "a2")
        await load.stop()
    base = a1["ms"] + a2["ms"]
    p_base, p_b = percentiles(base), percentiles(b["ms"])
    lat = [s for s, _ in writers.done]
    out = {
        "without_writes": {
            **p_base,
            "a": percentiles(a1["ms"]),
            "a_again": percentiles(a2["ms"]),
            "degraded": a1["degraded"] + a2["degraded"],
        },
        "with_writes_queued": {
            **p_b,
            "degraded": b["degraded"],
            "seconds": b["seconds"],
            "writes_outstanding_at_start": queued_at_start,
            "writes_outstanding_at_end": queued_at_end,
            "writes_answered_during": answered_during_b,
        },
        "writes": {
            "answered": len(writers.done),
            "ok": sum(1 for _, st in writers.done if st == 200),
            "errors": writers.errors[:5],
            "latency_s": {
                "min": round(min(lat), 2) if lat else None,
                "p50": round(sorted(lat)[len(lat) // 2], 2) if lat else None,
                "max": round(max(lat), 2) if lat else None,
            },
            "drain_s": round(drain_s, 1),
            "model_requests_delayed": fault.faults["delayed"],
        },
        "search_failures": (a1["failed"] + b["failed"] + a2["failed"])[:5],
        "searches_failed": len(a1["failed"]) + len(b["failed"]) + len(a2["failed"]),
    }
    out["attribution"] = attribution(a1, b, a2, writers.landed, fault, args.batch)
    out["baseline_model_load"] = {"on": args.model_load, "batches_sent": load.sent}
    out["p99_ratio"] = round(p_b["p99_ms"] / p_base["p99_ms"], 3)
    out["p50_ratio"] = round(p_b["p50_ms"] / p_base["p50_ms"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--writes", type=int, default=40, help="writes kept outstanding in B")
    ap.add_argument("--batch", type=int, default=8, help="documents per write (>= --searchers+1)")
    ap.add_argument("--delay-s", type=float, default=5.0, help="the model's delay per write")
    ap.add_argument("--searches", type=int, default=1000, help="searches per phase")
    ap.add_argument("--searchers", type=int, default=4, help="concurrent search clients")
    ap.add_argument("--max-ratio", type=float, default=1.5)
    ap.add_argument(
        "--model-load",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="A and A' carry the model-server work B's writes cause (see above)",
    )
    ap.add_argument(
        "--write-threads", type=int, default=4, help="the proxy's writes.threads (its default)"
    )
    add_run_args(ap, "write-contention")
    args = ap.parse_args()
    if args.batch <= args.searchers:
        ap.error("--batch must exceed --searchers: a micro-batch of queries must never be delayed")
    if not infinity_installed():
        print("Infinity is not installed: run `make infinity`", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = Infinity(work / "infinity.log")
    fault: FaultProxy | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        print("bench-writes: starting Infinity, building the demo migration", file=sys.stderr)
        server.start()
        fault = FaultProxy(server.url).start()
        fault.delay_min_inputs = args.batch
        port = free_port()
        config = write_config(work / "data", port, fault.url)
        prepare(config, python_reference(), backfill_share=1.0)
        proc = serve(config, port, work / "proxy.log")
        print(
            f"bench-writes: {args.searches} searches x 3 phases, {args.searchers} clients; "
            f"{args.writes} writes of {args.batch} docs, model delay {args.delay_s:g}s",
            file=sys.stderr,
        )
        out = asyncio.run(bench(f"http://127.0.0.1:{port}", fault, args))
    finally:
        if proc is not None:
            stop(proc)
        if fault is not None:
            fault.stop()
        server.stop()
    out["config"] = {k: getattr(args, k) for k in ("writes", "batch", "delay_s", "searches",
                                                   "searchers", "max_ratio", "model_load",
                                                   "write_threads")}  # fmt: skip
    out["machine"] = {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()}
    w, b = out["writes"], out["with_writes_queued"]
    checks = {
        "p99_within_ratio": out["p99_ratio"] <= args.max_ratio,
        "no_search_failed": out["searches_failed"] == 0,
        "writes_were_slow": (w["latency_s"]["min"] or 0) >= args.delay_s,
        "writes_stayed_queued": min(
            b["writes_outstanding_at_start"], b["writes_outstanding_at_end"]
        )
        >= args.writes,  # fmt: skip
        "writes_all_acknowledged": w["ok"] == w["answered"] > 0,
    }
    out["checks"] = checks
    out["ok"] = all(checks.values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    print(
        f"bench-writes: /search p99 {out['without_writes']['p99_ms']} ms without writes, "
        f"{b['p99_ms']} ms with {args.writes} queued: x{out['p99_ratio']} "
        f"({'ok' if out['ok'] else 'FAILED: ' + ', '.join(k for k, v in checks.items() if not v)})",
        file=sys.stderr,
    )
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
