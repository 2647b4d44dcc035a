"""Scale run: 100k to 1M documents on the embedded engine.

    python loadtest/scale.py [--docs 100000,1000000]

SciFact's 5,183 documents are replicated into --docs documents (each copy's text tagged, its
vectors the original's plus small noise, re-normalised: precomputed, from the embedding cache
that `crossfade eval --beir <scifact>` fills, else computed once here). Reports, per size:
seeding rate (upsert, points/s), the counts a serving proxy makes (coverage), the backfill's
rate on a sample (documents put back to no dense vector, re-embedded through the worker's
guarded path, beside the model alone), disk, proxy start-up to ready and RSS, the HNSW build
(`optimize()`: how long, how long it freezes its own process, it holds the GIL) and what a
serving proxy sees meanwhile (the build runs in another process on a copy of the shards, as
`crossfade optimize` runs offline: the proxy never calls it), then fused latency at 1 and 16
clients after the build. Growth as ratios to the first size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.bench import queries  # noqa: E402
from loadtest.harness import free_port, run_load, stop_process, wait_ready  # noqa: E402
from proxy.beir import load_beir  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.document import Doc  # noqa: E402
from proxy.embedding import embed_documents_cached  # noqa: E402
from proxy.experiment import scratch_settings  # noqa: E402
from proxy.ingest import ensure_index  # noqa: E402
from proxy.point import make_point  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402

STOP_GRACE_S = 120  # a proxy on 1M points flushes its shards on the way out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS (all resident pages), RssAnon (the process's own heap) or RssFile (the shards'
    mapped files: page cache the kernel can drop and read again)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss(pid: int) -> dict[str, int]:
    return {f: round(rss_mb(pid, f)) for f in ("VmRSS", "RssAnon", "RssFile")}


def du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20)


def backfill_sample(rt: Runtime, docs: list[Doc], n: int) -> dict[str, Any]:
    """`n` documents put back to pending (no new vector) and re-embedded through the worker's
    guarded path (`Reembedder.reembed`: claim, retrieve, embed, conditional write, done) with
    the real model; then put back again and re-written through the same path with the vectors
    precomputed (the model swapped for a lookup): the write path's own rate. The model alone
    is the first's embedding time."""
    from proxy.migration.worker import Reembedder
    from proxy.model import Embedded

    sample = docs[:n]
    ids = [d.doc_id for d in sample]
    new = rt.store("new")
    model = rt.model("new")
    model.embed_documents([d.text for d in sample[:8]])  # warm-up
    worker = Reembedder(rt)
    seen: dict[str, np.ndarray] = {}
    embed_s = 0.0
    real = model.embed_billed

    def timed(texts: Any) -> Embedded:
        nonlocal embed_s
        t0 = time.perf_counter()
        out = real(texts)
        embed_s += time.perf_counter() - t0
        seen.update(zip(texts, out.vectors, strict=True))
        return out

    def lookup(texts: Any) -> Embedded:
        return Embedded(np.stack([seen[t] for t in texts]), 0)

    out: dict[str, Any] = {"sample": n}
    for name, fn in (("worker", timed), ("write_path", lookup)):
        new.upsert([make_point(rt, "new", d) for d in sample])  # pending again
        assert not new.with_dense(ids)
        model.embed_billed = fn  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            written = worker.reembed(rt.state.claim_ids(ids, 600))
            took = time.perf_counter() - t0
        finally:
            del model.embed_billed
        assert written == n and len(new.with_dense(ids)) == n, (written, n)
        out[f"{name}_docs_per_s"] = round(n / took, 1)
    out["model_only_docs_per_s"] = round(n / embed_s, 1)
    return out


def build(data: Path, beir: Path, n_docs: int, backfill: int) -> dict[str, Any]:
    settings = load_settings(ROOT / "config" / "scifact.yaml", data_dir=str(data))
    # The embedding cache `crossfade eval --beir <scifact>` fills (its scratch data dir).
    scratch = scratch_settings(load_settings(ROOT / "config" / "scifact.yaml"), beir)
    cache = ROOT / scratch.data_path("cache")
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
        new = rt.store("new")
        for name, dense in (("count_s", False), ("count_dense_s", True)):
            t0 = time.perf_counter()
            new.count(dense_only=dense)
            out[name] = round(time.perf_counter() - t0, 3)
        copy1 = [Doc(f"{d.doc_id}~1", f"{d.text} [copy 1]", d.metadata) for d in base]
        out["backfill"] = backfill_sample(rt, copy1, backfill) if backfill else None
        for side in ("old", "new"):
            rt.store(side).flush()
    out["disk_mb"] = du_mb(data)
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


def start(config: Path, data: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """A `crossfade serve` process on `data`; seconds from its start to /readyz 200."""
    port = free_port()
    env = {
        **os.environ,
        "CROSSFADE_DATA_DIR": str(data),
        "CROSSFADE_SERVER__PORT": str(port),
        "CROSSFADE_SERVER__QUERY_CACHE_SIZE": "0",
        "CROSSFADE_MIGRATION__BACKFILL": "false",
        "CROSSFADE_MIGRATION__LAZY": "false",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 900)
    except BaseException:
        stop_process(proc, grace=STOP_GRACE_S)
        raise
    return proc, url, round(time.perf_counter() - t0, 1)


def load(url: str, qs: list[str], clients: int, n: int) -> dict[str, Any]:
    rep = asyncio.run(
        run_load(
            url, qs[:n], clients=clients, requests=n, max_seconds=600, payload={"reembed": False}
        )
    )
    s = rep.summary()
    return {k: s[k] for k in ("requests", "errors", "qps", "p50_ms", "p95_ms", "p99_ms")} | {
        "max_ms": round(max(rep.latencies_ms, default=0.0), 1)
    }


def measure(config: Path, data: Path, qs: list[str], n1: int, n16: int) -> dict[str, Any]:
    proc, url, ready_s = start(config, data)
    try:
        out: dict[str, Any] = {
            "startup_to_ready_s": ready_s,
            "rss_mb_idle": rss(proc.pid),
        }
        load(url, qs[-20:], 1, 20)  # warm-up (first-query paths, page cache)
        out["fused@1"] = load(url, qs, 1, n1)
        out["fused@16"] = load(url, qs, 16, n16)
        out["rss_mb_after_load"] = rss(proc.pid)
        return out
    finally:
        stop_process(proc, grace=STOP_GRACE_S)


def serve_during_build(config: Path, data: Path, built: Path, qs: list[str]) -> dict[str, Any]:
    """The proxy serves `data` (1 client, paced) while another process builds the HNSW
    index of a copy of its shards (`built`), as `crossfade optimize` does offline: the longest
    request against the build's length says whether any request waited on it."""
    proc, url, _ = start(config, data)
    try:
        load(url, qs[-20:], 1, 20)
        builder = subprocess.Popen(
            [sys.executable, __file__, "--optimize-only", str(built)],
            stdout=subprocess.PIPE,
        )
        # Paced, one at a time, idle three times as long as the last request took (at least
        # 250 ms between starts): a sample of latency through the build that leaves the build
        # its share of this box's cores even where a request is a 1M brute-force scan; a
        # freeze would show as one request as long as the freeze.
        lat: list[float] = []
        errors = 0
        i = 0
        with httpx.Client(base_url=url, timeout=900) as http:
            while builder.poll() is None:
                body = {"query": qs[i % len(qs)], "k": 10, "with_text": False, "reembed": False}
                i += 1
                t0 = time.perf_counter()
                r = http.post("/search", json=body)
                lat.append((time.perf_counter() - t0) * 1000)
                errors += r.status_code != 200
                time.sleep(max(0.25 - lat[-1] / 1000, 3 * lat[-1] / 1000))
        out_text, _ = builder.communicate()
        build = json.loads(out_text)
        arr = np.array(lat or [0.0])
        return {
            "optimize": build,
            "served_meanwhile": {
                "requests": len(lat),
                "errors": errors,
                "p50_ms": round(float(np.percentile(arr, 50)), 1),
                "p99_ms": round(float(np.percentile(arr, 99)), 1),
                "max_ms": round(float(arr.max()), 1),
            },
        }
    finally:
        stop_process(proc, grace=STOP_GRACE_S)


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """b / a for the figures that grow with size."""

    def r(x: float, y: float) -> float:
        return round(y / x, 2) if x else float("nan")

    out = {
        "documents": r(a["build"]["documents"], b["build"]["documents"]),
        "disk": r(a["build"]["disk_mb"], b["build"]["disk_mb"]),
        "seeding_points_per_s": r(a["build"]["points_per_s"], b["build"]["points_per_s"]),
        "count_dense_s": r(a["build"]["count_dense_s"], b["build"]["count_dense_s"]),
    }
    if a["build"]["backfill"] and b["build"]["backfill"]:
        out["backfill_worker_docs_per_s"] = r(
            a["build"]["backfill"]["worker_docs_per_s"], b["build"]["backfill"]["worker_docs_per_s"]
        )
    for side in ("old", "new"):
        out[f"optimize_s_{side}"] = r(
            a["build_hnsw"]["optimize"][side]["optimize_s"],
            b["build_hnsw"]["optimize"][side]["optimize_s"],
        )
    x, y = a["after_optimize"], b["after_optimize"]
    out |= {
        "startup_to_ready_s": r(x["startup_to_ready_s"], y["startup_to_ready_s"]),
        "rss_idle": r(x["rss_mb_idle"]["VmRSS"], y["rss_mb_idle"]["VmRSS"]),
        "rss_after_load": r(x["rss_mb_after_load"]["VmRSS"], y["rss_mb_after_load"]["VmRSS"]),
        "rss_anon_after_load": r(
            x["rss_mb_after_load"]["RssAnon"], y["rss_mb_after_load"]["RssAnon"]
        ),
        "fused@1_p50": r(x["fused@1"]["p50_ms"], y["fused@1"]["p50_ms"]),
        "fused@1_p99": r(x["fused@1"]["p99_ms"], y["fused@1"]["p99_ms"]),
        "fused@16_p50": r(x["fused@16"]["p50_ms"], y["fused@16"]["p50_ms"]),
        "fused@16_p99": r(x["fused@16"]["p99_ms"], y["fused@16"]["p99_ms"]),
    }
    return out


def run(n_docs: int, args: argparse.Namespace, qs: list[str]) -> dict[str, Any]:
    data = Path(args.work) / str(n_docs)
    built = Path(args.work) / f"{n_docs}-hnsw"
    config = ROOT / "config" / "scifact.yaml"
    if args.reuse and (built / "old").exists():
        report = json.loads((Path(args.work) / f"{n_docs}.json").read_text())
        shutil.rmtree(data, ignore_errors=True)
    else:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(built, ignore_errors=True)
        report = {"build": build(data, Path(args.beir), n_docs, args.backfill)}
        log(report)
        if args.before:
            report["before_optimize"] = measure(config, data, qs[:600], 100, 500)
            log(report["before_optimize"])
        shutil.copytree(data, built)
        report["build_hnsw"] = serve_during_build(config, data, built, qs)
        log(report["build_hnsw"])
        report["build_hnsw"]["disk_mb_after"] = du_mb(built)
        shutil.rmtree(data, ignore_errors=True)
        (Path(args.work) / f"{n_docs}.json").write_text(json.dumps(report))
    report["after_optimize"] = measure(config, built, qs[600:], 100, 500)
    log(report["after_optimize"])
    return report


def log(obj: Any) -> None:
    print(json.dumps(obj), file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--docs", default="100000", help="sizes, comma-separated: 100000,1000000")
    ap.add_argument("--backfill", type=int, default=256, help="documents re-embedded (sample)")
    ap.add_argument("--before", action="store_true", help="also measure before the HNSW build")
    ap.add_argument("--reuse", action="store_true", help="reuse a size's built shards")
    ap.add_argument("--work", default=str(ROOT / ".crossfade" / "scale"))
    ap.add_argument("--out", default=str(ROOT / ".crossfade" / "scale.json"))
    ap.add_argument("--optimize-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.optimize_only:
        path = Path(args.optimize_only)
        print(json.dumps({side: optimize_offline(path / side) for side in ("old", "new")}))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    qs = queries(Path(args.beir))
    sizes = [int(n) for n in args.docs.split(",")]
    report: dict[str, Any] = {str(n): run(n, args, qs) for n in sizes}
    if len(sizes) > 1:
        report["ratios"] = {
            f"{n}/{sizes[0]}": ratios(report[str(sizes[0])], report[str(n)]) for n in sizes[1:]
        }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
