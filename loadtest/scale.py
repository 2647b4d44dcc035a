"""Scale run: 100k documents on the embedded engine.

    python loadtest/scale.py [--docs 100000]

SciFact's 5,183 documents are replicated into --docs documents (each copy's text tagged, its
vectors the original's plus small noise, re-normalised: precomputed, from the embedding cache
that `crossfade eval` fills). Reports: index build time (upsert), proxy RSS, query latency
before and after the HNSW build, and how long `optimize()` takes and how long it freezes its
own process (it holds the GIL). The proxy never calls optimize: `crossfade optimize` runs it
offline, on a stopped proxy's shards, which is what keeps it off the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.bench import queries  # noqa: E402
from loadtest.harness import free_port, run_load, wait_ready  # noqa: E402
from proxy.beir import load_beir  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.document import Doc  # noqa: E402
from proxy.embedding import embed_documents_cached  # noqa: E402
from proxy.ingest import ensure_index  # noqa: E402
from proxy.point import make_point  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build(data: Path, beir: Path, n_docs: int) -> dict[str, Any]:
    settings = load_settings(ROOT / "config" / "scifact.yaml", data_dir=str(data))
    cache = ROOT / ".crossfade" / "scifact" / "cache"
    if cache.exists():
        shutil.copytree(cache, data / "cache")
    base = load_beir(beir, "test").docs
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    with Runtime(settings) as rt:
        vecs = {
            side: embed_documents_cached(rt.model(side), [d.text for d in base], rt.embedding_cache)
            for side in ("old", "new")
        }
        for side in ("old", "new"):
            ensure_index(rt, side)
        t0 = time.perf_counter()
        copies = -(-n_docs // len(base))
        written = 0
        for c in range(copies):
            for start in range(0, len(base), 1000):
                chunk = base[start : start + 1000][: n_docs - written]
                if not chunk:
                    break
                docs = [Doc(f"{d.doc_id}~{c}", f"{d.text} [copy {c}]", d.metadata) for d in chunk]
                for side in ("old", "new"):
                    v = vecs[side][start : start + len(chunk)]
                    v = v + rng.normal(0, 0.02, v.shape).astype(np.float32) if c else v
                    v /= np.linalg.norm(v, axis=1, keepdims=True)
                    rt.store(side).upsert(
                        [make_point(rt, side, d, v[i]) for i, d in enumerate(docs)]
                    )
                written += len(chunk)
        for side in ("old", "new"):
            rt.store(side).flush()
        out["documents"] = rt.store("new").count()
        out["build_s"] = round(time.perf_counter() - t0, 1)
        out["points_per_s"] = round(2 * written / out["build_s"])
    return out


def optimize_offline(path: Path) -> dict[str, float]:
    """optimize() in this process, with a ticker thread measuring how long the GIL is held."""
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(str(path))
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = threading.Thread(target=tick)
    t.start()
    t0 = time.perf_counter()
    shard.optimize()
    took = time.perf_counter() - t0
    stop.set()
    t.join()
    shard.close()
    return {"optimize_s": round(took, 1), "longest_freeze_s": round(max(gaps, default=0), 1)}


def measure(config: Path, data: Path, qs: list[str]) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "CROSSFADE_DATA_DIR": str(data),
        "CROSSFADE_SERVER__PORT": str(port),
        "CROSSFADE_SERVER__QUERY_CACHE_SIZE": "0",
        "CROSSFADE_MIGRATION__BACKFILL": "false",
        "CROSSFADE_MIGRATION__LAZY": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 300)
        out: dict[str, Any] = {"rss_mb_idle": round(rss_mb(proc.pid))}
        for name, clients, n in (("fused@1", 1, 100), ("fused@16", 16, 500)):
            rep = asyncio.run(
                run_load(
                    url,
                    qs[:n],
                    clients=clients,
                    requests=n,
                    max_seconds=600,
                    payload={"reembed": False},
                )
            )
            s = rep.summary()
            out[name] = {
                k: s[k] for k in ("requests", "errors", "qps", "p50_ms", "p95_ms", "p99_ms")
            }
        out["rss_mb_after_load"] = round(rss_mb(proc.pid))
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--work", default=str(ROOT / ".crossfade" / "scale"))
    ap.add_argument("--out", default=str(ROOT / ".crossfade" / "scale.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = Path(args.work)
    shutil.rmtree(data, ignore_errors=True)
    report: dict[str, Any] = {"build": build(data, Path(args.beir), args.docs)}
    print(json.dumps(report), file=sys.stderr)
    qs = queries(Path(args.beir))
    config = ROOT / "config" / "scifact.yaml"
    report["before_optimize"] = measure(config, data, qs[:600])
    print(json.dumps(report["before_optimize"]), file=sys.stderr)
    report["optimize"] = {side: optimize_offline(data / side) for side in ("old", "new")}
    print(json.dumps(report["optimize"]), file=sys.stderr)
    report["after_optimize"] = measure(config, data, qs[600:])
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
