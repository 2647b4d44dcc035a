"""A bounded async load generator for /search (httpx, loopback only).

`run_load` drives N concurrent clients for a fixed number of requests (and at most
`max_seconds`), checks every response for consistency (status 200; the mode in the header,
the body and the lists each hit was ranked in all agree, so no response mixes modes) and
reports latency percentiles, QPS and errors. Actions (a cutover, a rollback) can be fired
when given fractions of the requests have been sent.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

MODE_LISTS = {
    "old": {"old"},
    "shadow": {"old"},
    "fused": {"old", "new", "bm25"},
    "new": {"new", "bm25"},
}


@dataclass
class LoadReport:
    requests: int = 0
    errors: int = 0
    inconsistent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)
    generations: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: LoadReport) -> None:
        """Pool another run of the same scenario into this one (interleaved blocks)."""
        self.requests += other.requests
        self.errors += other.errors
        self.inconsistent += other.inconsistent
        self.latencies_ms += other.latencies_ms
        self.modes.update(other.modes)
        self.generations.update(other.generations)
        self.error_samples += other.error_samples
        self.wall_s += other.wall_s
        self.events += other.events

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "inconsistent": self.inconsistent,
            "qps": round(self.requests / self.wall_s, 1) if self.wall_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "modes": dict(self.modes),
            "generations": dict(self.generations),
            "events": self.events,
            "error_samples": self.error_samples[:5],
        }


def check(resp: httpx.Response) -> str | None:
    """Why a response is not wholly from one mode, or None."""
    mode = resp.headers.get("x-crossfade-mode")
    body = resp.json()
    if body.get("mode") != mode:
        return f"header mode {mode} != body mode {body.get('mode')}"
    allowed = MODE_LISTS.get(mode or "", set())
    for hit in body["results"]:
        if not set(hit["ranks"]) or not set(hit["ranks"]) <= allowed:
            return f"mode {mode} but a hit ranked in {sorted(hit['ranks'])}"
    return None


async def run_load(
    url: str,
    queries: Sequence[str],
    clients: int = 16,
    requests: int = 2000,
    max_seconds: float = 600.0,
    payload: dict[str, Any] | None = None,
    headers: Callable[[int], dict[str, str]] | None = None,
    actions: Sequence[tuple[float, Callable[[], Awaitable[Any]], str]] = (),
    check_modes: bool = True,
) -> LoadReport:
    """`actions`: (fraction of requests sent, coroutine factory, label), fired once each, in
    order; the run lasts at least `requests` requests and until the last action is done (or
    `max_seconds`)."""
    report = LoadReport()
    sent = 0
    deadline = time.monotonic() + max_seconds
    pending = sorted(actions, key=lambda a: a[0])
    fired: list[asyncio.Task[Any]] = []
    lock = asyncio.Lock()

    def actions_busy() -> bool:
        return bool(pending) or any(not t.done() for t in fired)

    spacing = requests / (len(pending) + 1)
    last_done_at: list[int] = []  # request count when each fired action had finished

    async def next_index() -> int | None:
        """The next request number. Actions fire in order, each once the previous one has
        finished and `spacing` requests more have been served since (so every state gets
        traffic); the load goes on past `requests` until the last action is done and has
        seen its share of traffic too."""
        nonlocal sent
        async with lock:
            settled = not fired or (
                len(last_done_at) == len(fired) and sent >= last_done_at[-1] + spacing
            )
            if time.monotonic() > deadline or (sent >= requests and not actions_busy() and settled):
                return None
            i = sent
            sent += 1
            if fired and fired[-1].done() and len(last_done_at) < len(fired):
                last_done_at.append(sent)
            ready = not fired or len(last_done_at) == len(fired)
            after = last_done_at[-1] + spacing if last_done_at else 0
            if pending and ready and sent >= max(pending[0][0] * requests, after):
                _, make, label = pending.pop(0)
                report.events.append({"at_request": sent, "action": label})
                fired.append(asyncio.create_task(make()))
            return i

    async def client(cid: int, http: httpx.AsyncClient) -> None:
        while (i := await next_index()) is not None:
            body = {
                "query": queries[i % len(queries)],
                "k": 10,
                "with_text": False,
                **(payload or {}),
            }
            t0 = time.perf_counter()
            try:
                r = await http.post("/search", json=body, headers=headers(cid) if headers else None)
                ms = (time.perf_counter() - t0) * 1000
                report.requests += 1
                if r.status_code != 200:
                    report.errors += 1
                    report.error_samples.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                why = check(r) if check_modes else None
                if why:
                    report.inconsistent += 1
                    report.error_samples.append(why)
                report.latencies_ms.append(ms)
                report.modes[r.headers.get("x-crossfade-mode", "?")] += 1
                report.generations[r.headers.get("x-crossfade-generation", "?")] += 1
            except httpx.HTTPError as e:
                report.requests += 1
                report.errors += 1
                report.error_samples.append(repr(e))

    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    report.wall_s = time.monotonic() - t0
    for t, ev in zip(fired, report.events, strict=False):
        try:
            ev["result"] = await t
        except Exception as e:  # an action failing is a finding, not a crash of the harness
            ev["result"] = f"failed: {e!r}"
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited during start")
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """`predicate`'s first truthy value within `timeout` seconds (asked every `interval`);
    AssertionError naming `what` after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 60) -> None:
    """SIGTERM a child still running, then SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
