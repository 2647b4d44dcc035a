"""A fleet on one box, 127.0.0.1 only: one PostgreSQL (the `pgserver` wheel's PostgreSQL 16,
on a Unix socket), one Chroma server, the hosted new model (Infinity), and any number of
`crossfade serve` replicas and `crossfade worker` processes, each a real child process with a
data dir of its own, sharing one migration through `state.url`.

Used by tests/test_fleet.py (the fleet's must-shows) and by `make fleet` (`python -m
loadtest.fleet`: backfill docs/s with 1 and 2 workers, fused p99 with 1 and 3 replicas, as
ratios measured in one run). Every process is stopped at the end; load is bounded in count
and time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from loadtest.harness import free_port, stop_process
from loadtest.servers import Chroma, Infinity, hosted_model, start_postgres

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "fleet-admin-key"
WRITER = "fleet-writer-key"


class Postgres:
    """PostgreSQL 16 from the `pgserver` wheel (runs as root here), data in `path`, on a Unix
    socket in it: nothing listens on a network port."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server: Any = None

    def start(self) -> Postgres:
        self.path.mkdir(parents=True, exist_ok=True)
        self.server = start_postgres(self.path)
        return self

    @property
    def url(self) -> str:
        return str(self.server.get_uri())

    def database(self, name: str) -> str:
        """A fresh database; its URI."""
        self.server.psql(f'DROP DATABASE IF EXISTS "{name}";')
        self.server.psql(f'CREATE DATABASE "{name}";')
        return self.url.replace("/postgres?", f"/{name}?", 1)

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


def corpus(n: int) -> list[dict[str, str]]:
    """The demo corpus (CPython's language reference, in ~360-character passages), `n` of them."""
    from proxy.demo import python_reference

    docs = python_reference(400)
    while len(docs) < n:  # more than it holds: the passages again, under other ids
        docs += [
            type(d)(doc_id=f"{d.doc_id}~{len(docs)}", text=d.text + f" ({len(docs)})")
            for d in python_reference(400)
        ]
    return [{"id": d.doc_id, "text": d.text} for d in docs[:n]]


def own_env() -> dict[str, str]:
    """This environment without CROSSFADE_* settings (they beat a config file's): a fleet
    member's settings are its YAML, whoever starts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSFADE_")}
    return {**env, "HF_HUB_OFFLINE": "1"}


@dataclass
class Member:
    """One `crossfade serve` or `crossfade worker` child process."""

    name: str
    command: str
    config: Path
    log: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 180) -> Member:
        env = {**own_env(), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "--config", str(self.config), self.command],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            if self.ready():
                return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not start in {timeout:.0f}s: see {self.log}")

    def ready(self) -> bool:
        if self.command == "worker":
            return b"worker on the shared state" in self.log.read_bytes()
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Fleet:
    """Configs, setup and members of one fleet under `root`."""

    root: Path
    state_url: str
    chroma_url: str
    model_url: str
    migration: dict[str, Any] = field(default_factory=dict)
    collection: str = "fleet"
    members: list[Member] = field(default_factory=list)
    # models.new instead of the hosted one (e.g. the demo's local model: tests/test_ray.py)
    new_model: dict[str, Any] | None = None
    # where the models' ONNX exports are cached (default: under each member's data dir)
    model_cache: str | None = None

    def config(self, name: str, port: int | None = None) -> Path:
        demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
        cfg = {
            "data_dir": str(self.root / f"data-{name}"),
            "mode": "fused",
            "models": {
                "old": demo["models"]["old"],
                "new": self.new_model
                or hosted_model(
                    self.model_url, batch_size=16, max_concurrent_requests=2, backoff_s=0.05
                ),
            },
            "indexes": {
                side: {
                    "backend": "chroma",
                    "url": self.chroma_url,
                    "collection": f"{self.collection}_{side}",
                }
                for side in ("old", "new")
            },
            "state": {"url": self.state_url, "poll_s": 0.25},
            # A lease outlives a batch (a loaded box's too): one that ran out mid-batch would
            # hand its documents to another worker, embedded twice.
            "migration": {"in_serve": False, "lease_s": 20.0, "batch_size": 16, **self.migration},
            "server": {
                "host": "127.0.0.1",
                "port": port or 8000,
                "admin_key": ADMIN,
                "api_keys": [WRITER],
                "history_interval_s": 1.0,
            },
            "writes": {"flush_interval_s": 1.0},
            "bm25_avg_len": demo["bm25_avg_len"],
        }
        if self.model_cache:
            cfg["model_cache"] = self.model_cache
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def cli(self, *args: str, timeout: float = 600) -> str:
        """A `crossfade` command run as the operator (its own data dir); its stdout."""
        out = subprocess.run(
            [sys.executable, "-m", "proxy.cli", "--config", str(self.config("cli")), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=own_env(),
        )
        if out.returncode != 0:
            raise RuntimeError(f"crossfade {' '.join(args)}: {out.stderr[-3000:]}")
        return out.stdout

    def setup(self, docs: list[dict[str, str]]) -> None:
        """The old index written by the old model, then `migrate start` (BM25 seeded)."""
        path = self.root / "corpus.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        self.cli("ingest", "--index", "old", "--quiet", str(path))
        self.cli("migrate", "start", "--quiet")

    def add(self, command: str, name: str | None = None) -> Member:
        name = name or f"{command}-{sum(m.command == command for m in self.members) + 1}"
        port = free_port() if command == "serve" else None
        member = Member(name, command, self.config(name, port), self.root / f"{name}.log", port)
        self.members.append(member)
        return member

    def replicas(self) -> list[Member]:
        return [m for m in self.members if m.command == "serve" and m.alive()]

    def stop(self) -> None:
        for m in self.members:
            m.stop()


def admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.request(
        method,
        url + path,
        json=body,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=120,
    )
    r.raise_for_status()
    return r.json()


def backfill(url: str, action: str) -> Any:
    """Pause or resume every worker of the fleet, through one replica."""
    return admin(url, "POST", "/migration/backfill", {"action": action, "actor": "fleet"})


def status(url: str) -> dict[str, Any]:
    return admin(url, "GET", "/migration")  # type: ignore[no-any-return]


@dataclass
class Clients:
    """`n` client threads over the replicas: each searches, and every `edit_every`-th request
    rewrites one of its own documents (disjoint per client, so the last acknowledged text of
    each is known). A request refused by a replica that died is sent to the next one and
    counted under `failovers`, never silently; any other error or non-2xx is a failure."""

    urls: Callable[[], list[str]]
    queries: list[str]
    owned: list[list[str]]  # per client, the doc ids it edits
    edit_every: int = 5
    pause_s: float = 0.05
    max_requests: int = 20_000
    failures: list[str] = field(default_factory=list)
    failovers: int = 0
    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    generations: Counter[str] = field(default_factory=Counter)
    last_text: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Clients:
        for i in range(len(self.owned)):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, i: int) -> None:
        edits = 0
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self._stop.is_set() and self.requests < self.max_requests:
                n += 1
                edit = self.owned[i] and n % self.edit_every == 0
                if edit:
                    doc = self.owned[i][edits % len(self.owned[i])]
                    edits += 1
                    text = f"Edited by client {i}, version {edits}: {self.queries[n % 7]}"
                    body = {"documents": [{"id": doc, "text": text}]}
                    self._send(http, i + n, "PUT", "/documents", body, (doc, text))
                else:
                    q = self.queries[(i * 31 + n) % len(self.queries)]
                    self._send(http, i + n, "POST", "/search", {"query": q, "k": 10}, None)
                time.sleep(self.pause_s)

    def _send(
        self,
        http: httpx.Client,
        pick: int,
        method: str,
        path: str,
        body: dict[str, Any],
        edit: tuple[str, str] | None,
    ) -> None:
        headers = {"Authorization": f"Bearer {WRITER}"}
        last = "no replica alive"
        for attempt in range(4):
            urls = self.urls()
            if not urls:
                time.sleep(0.5)
                continue
            url = urls[(pick + attempt) % len(urls)]
            t0 = time.perf_counter()
            try:
                r = http.request(method, url + path, json=body, headers=headers)
            except httpx.TransportError as e:  # a replica killed under it: the next one
                with self._lock:
                    self.failovers += 1
                last = f"{url}: {type(e).__name__}"
                continue
            took = (time.perf_counter() - t0) * 1000
            with self._lock:
                self.requests += 1
                if r.status_code >= 300:
                    self.failures.append(f"{method} {path} {r.status_code}: {r.text[:300]}")
                    return
                if edit is not None:
                    self.last_text[edit[0]] = edit[1]
                else:
                    self.latencies_ms.append(took)
                    self.generations[r.headers.get("X-Crossfade-Generation", "?")] += 1
            return
        with self._lock:
            self.failures.append(f"{method} {path}: no replica answered ({last})")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def generation_of(url: str) -> int:
    r = httpx.post(
        url + "/search",
        json={"query": "generation", "k": 1},
        timeout=30,
        headers={"Authorization": f"Bearer {WRITER}"},
    )
    return int(r.headers["X-Crossfade-Generation"])


@contextmanager
def servers(root: Path) -> Iterator[tuple[Postgres, Chroma, Infinity]]:
    """PostgreSQL, Chroma and Infinity for a fleet under `root`, stopped at the end."""
    pg = Postgres(root / "pg").start()
    chroma = Chroma(root / "chroma").start()
    model = Infinity(root / "infinity.log").start()
    try:
        yield pg, chroma, model
    finally:
        model.stop()
        chroma.stop()
        pg.stop()


def measure(root: Path, docs: int, seconds: float) -> dict[str, Any]:
    """`make fleet`, on one fleet of 3 replicas: fused latency over 16 clients sending to 1,
    then 3, then 1 replica (the backfill paused; the idle replicas run meanwhile); then the
    backfill's docs/s with 1, then 2, then 1 worker (a worker started or stopped between
    phases). Each figure is over `seconds`; "1" is the mean of its two phases, so a drift of
    the box over the run does not pass for a difference."""
    out: dict[str, Any] = {"docs": docs, "seconds_per_phase": seconds}
    with servers(root) as (pg, chroma, model):
        texts = corpus(docs)
        queries = [d["text"][:80] for d in texts[:: max(1, len(texts) // 50)]]
        fleet = Fleet(root / "fleet", pg.database("fleet"), chroma.url, model.url)
        fleet.root.mkdir(parents=True, exist_ok=True)
        fleet.setup(texts)
        try:
            replicas = [fleet.add("serve").start() for _ in range(3)]
            first = replicas[0].url
            backfill(first, "pause")
            p99: dict[int, list[float]] = {1: [], 3: []}
            qps: dict[int, list[float]] = {1: [], 3: []}
            for n in (1, 3, 1):
                urls = [r.url for r in replicas[:n]]
                load = Clients(lambda urls=urls: urls, queries, [[] for _ in range(16)], pause_s=0)
                load.start()
                time.sleep(seconds)
                load.stop()
                assert not load.failures, load.failures[:3]
                p99[n].append(float(np.percentile(load.latencies_ms, 99)))
                qps[n].append(len(load.latencies_ms) / seconds)
            for n in (1, 3):
                out[f"fused_p99_ms_{n}r"] = round(float(np.mean(p99[n])), 1)
                out[f"qps_{n}r"] = round(float(np.mean(qps[n])), 1)
            rate: dict[int, list[float]] = {1: [], 2: []}
            workers = [fleet.add("worker").start()]
            backfill(first, "resume")
            for n in (1, 2, 1):
                if n == 2:
                    workers.append(fleet.add("worker").start())
                elif len(workers) == 2:
                    workers.pop().stop()
                done, t0 = reembedded(first), time.monotonic()
                time.sleep(seconds)
                rate[n].append((reembedded(first) - done) / (time.monotonic() - t0))
            for n in (1, 2):
                out[f"backfill_docs_per_s_{n}w"] = round(float(np.mean(rate[n])), 1)
            out["covered_at_end"] = status(first)["indexes"]["new"]["coverage"]
        finally:
            fleet.stop()
    out["backfill_ratio_2w_vs_1w"] = round(
        out["backfill_docs_per_s_2w"] / max(out["backfill_docs_per_s_1w"], 1e-9), 2
    )
    out["p99_ratio_3r_vs_1r"] = round(out["fused_p99_ms_3r"] / max(out["fused_p99_ms_1r"], 1e-9), 2)
    out["qps_ratio_3r_vs_1r"] = round(out["qps_3r"] / max(out["qps_1r"], 1e-9), 2)
    return out


def reembedded(url: str) -> int:
    """Embeddings the fleet's workers wrote this migration (the shared counter)."""
    return int(status(url)["reembedded"]["embeddings"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=1200)
    p.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    p.add_argument("--root", default=None, help="work directory (default: a temp dir)")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        print(json.dumps(measure(root, args.docs, args.seconds), indent=2))


if __name__ == "__main__":
    main()
