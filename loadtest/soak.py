"""`make soak`: a bounded run (10 minutes by default) under `migrating` load on SciFact:
fused searches from several clients with lazy re-embedding on, the backfill running at its
default budget from 0% coverage, and a trickle of document writes. Reports the proxy's RSS
over time (growth after warm-up), errors, latency percentiles, and after the run, with the
proxy stopped, checks that every written document is in both indexes.

    python loadtest/soak.py [--seconds 600] [--clients 4]
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

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.bench import build, queries  # noqa: E402
from loadtest.harness import free_port, run_load, wait_ready  # noqa: E402
from proxy.config import load_settings  # noqa: E402

KEY = "soak-admin-key"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def trend(samples: list[dict[str, Any]], warmup_s: float = 60.0) -> float | None:
    pts = [(s["t_s"], s["rss_mb"]) for s in samples if s["t_s"] >= warmup_s]
    if len(pts) < 3:
        return None
    import numpy as np

    t, mb = np.array(pts).T
    return round(float(np.polyfit(t / 60.0, mb, 1)[0]), 2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--work", default=str(ROOT / ".crossfade" / "soak"))
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--write-every", type=float, default=2.0, help="seconds between writes")
    ap.add_argument(
        "--steady",
        action="store_true",
        help="no migration work and no writes: the baseline for the RSS trend",
    )
    ap.add_argument("--out", help="JSON report (default .crossfade/soak[-steady].json)")
    args = ap.parse_args()
    name = "soak-steady.json" if args.steady else "soak.json"
    args.out = args.out or str(ROOT / ".crossfade" / name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    beir, work = Path(args.beir), Path(args.work)
    qs = queries(beir)
    shutil.rmtree(work, ignore_errors=True)
    cache = ROOT / ".crossfade" / "scifact" / "cache"  # `make eval`'s embeddings, if any
    if cache.exists():
        shutil.copytree(cache, work / "cache")
    print("soak: building the old index, new index at 0%", file=sys.stderr)
    build(beir, work, 0)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CROSSFADE_DATA_DIR": str(work),
        "CROSSFADE_SERVER__PORT": str(port),
        "CROSSFADE_SERVER__ADMIN_KEY": KEY,
        "CROSSFADE_MODE": "fused",
    }
    config = str(ROOT / "config" / "scifact.yaml")
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", config, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[dict[str, Any]] = []
    writes = {"ok": 0, "errors": 0, "error_samples": []}
    written: dict[str, str] = {}
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            try:
                st = httpx.get(url + "/migration", timeout=30).json()
                cov = st["indexes"]["new"]["coverage"]
            except httpx.HTTPError:
                cov = None
            t = round(time.monotonic() - t0, 1)
            samples.append({"t_s": t, "rss_mb": rss_mb(proxy.pid), "coverage": cov})
            stop.wait(5.0)

    def writer() -> None:
        i = 0
        # Writes need a key (the admin key authorises them too).
        with httpx.Client(base_url=url, timeout=60, headers={"api-key": KEY}) as c:
            while not stop.wait(args.write_every):
                docs = [
                    {"id": f"soak-{i}-{j}", "text": qs[(i * 2 + j) % len(qs)] + f" (soak {i})"}
                    for j in range(2)
                ]
                i += 1
                try:
                    r = c.put("/documents", json={"documents": docs})
                except httpx.HTTPError as e:
                    r = None
                    writes["error_samples"].append(repr(e))
                if r is not None and r.status_code == 200:
                    writes["ok"] += 1
                    written.update({d["id"]: d["text"] for d in docs})
                else:
                    writes["errors"] += 1
                    if r is not None:
                        writes["error_samples"].append(f"{r.status_code}: {r.text[:200]}")

    try:
        wait_ready(url, proxy)
        if args.steady:
            admin = {"Authorization": f"Bearer {KEY}"}
            httpx.post(url + "/migration/backfill", json={"action": "pause"}, headers=admin)
        jobs = (sampler,) if args.steady else (sampler, writer)
        threads = [threading.Thread(target=f, daemon=True) for f in jobs]
        for t in threads:
            t.start()
        what = "steady (no migration work, no writes)" if args.steady else "migrating"
        print(f"soak: {args.seconds:.0f} s, {args.clients} clients, {what}", file=sys.stderr)
        report = asyncio.run(
            run_load(
                url,
                qs,
                clients=args.clients,
                requests=10**9,  # bounded by time
                max_seconds=args.seconds,
                payload={"with_text": True, "reembed": not args.steady},
            )
        )
        stop.set()
        for t in threads:
            t.join(timeout=120)
    finally:
        stop.set()
        if proxy.poll() is None:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(120)

    # Every acknowledged write is in both indexes with its text (proxy stopped: we own the
    # shards now).
    from proxy.runtime import Runtime

    settings = load_settings(config, data_dir=str(work))
    with Runtime(settings) as rt:
        missing = {
            side: sorted(set(written) - set(rt.store(side).retrieve(list(written), ["text"])))
            for side in ("old", "new")
        }
        counts = {side: rt.store(side).count() for side in ("old", "new")}
    rss = [s["rss_mb"] for s in samples]
    warm = next((s["rss_mb"] for s in samples if s["t_s"] >= 60), rss[0] if rss else 0.0)
    summary = {
        "seconds": round(report.wall_s, 1),
        "clients": args.clients,
        "search": report.summary(),
        "writes": {k: v for k, v in writes.items() if k != "error_samples"},
        "write_error_samples": writes["error_samples"][:5],
        "documents_written": len(written),
        "written_missing": {k: len(v) for k, v in missing.items()},
        "index_counts": counts,
        "coverage_start_end": [s["coverage"] for s in (samples[0], samples[-1])]
        if samples
        else None,
        "rss_mb": {
            "start": round(rss[0], 1) if rss else None,
            "after_60s": round(warm, 1),
            "end": round(rss[-1], 1) if rss else None,
            "max": round(max(rss), 1) if rss else None,
            "growth_after_warmup_mb": round(rss[-1] - warm, 1) if rss else None,
            "growth_after_warmup_pct": round(100 * (rss[-1] - warm) / warm, 1) if warm else None,
            # One end sample is noisy (RSS swings with allocator and batch sizes): the slope
            # of a line fitted through every sample after warm-up says whether it grows.
            "trend_after_warmup_mb_per_min": trend(samples),
        },
        "samples": samples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    brief = {k: v for k, v in summary.items() if k != "samples"}
    print(json.dumps(brief, indent=2))
    lost = sum(len(v) for v in missing.values())
    return 0 if report.errors == 0 and writes["errors"] == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
