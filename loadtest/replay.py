"""Replay a BEIR train split through a running proxy and watch the migration finish.

    python loadtest/replay.py --beir ../shared/data/scifact --baseline eval.json

1. Builds the old index (old model) and starts a migration, backfill OFF.
2. Starts `crossfade serve` (a real process, HTTP on 127.0.0.1).
3. Replays the train queries in chunks; after each chunk records coverage (raised by lazy
   re-embedding alone) and the test split's nDCG@10 through /search (reembed=false, so the
   measurement itself migrates nothing).
4. Turns backfill on, `kill -9`s the proxy half-way, restarts it, waits for 100%.
5. Prints `crossfade status`, runs `crossfade verify`, writes a JSON report.

Traffic goes only to 127.0.0.1; every loop is bounded in count and time.
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
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.harness import free_port  # noqa: E402
from proxy.evaluation import parse_qrels, parse_queries, score_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def crossfade(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], env=env, check=True, capture_output=True
    )
    return out.stdout.decode()


def wait_until(pred: Any, timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"replay: timed out waiting for {what}")


class Proxy:
    def __init__(self, config: str, env: dict[str, str], port: int) -> None:
        self.config, self.env, self.url = config, env, f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "--config", self.config, "serve"],
            env=self.env,
        )
        wait_until(
            lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200, 180, "ready"
        )

    def kill9(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def status(self) -> dict[str, Any]:
        return httpx.get(self.url + "/migration", timeout=30).json()


async def run_queries(
    url: str, queries: dict[str, str], reembed: bool, concurrency: int = 4
) -> dict[str, list[str]]:
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, list[str]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(qid: str, text: str) -> None:
            async with sem:
                r = await client.post(
                    "/search", json={"query": text, "k": 10, "with_text": False, "reembed": reembed}
                )
                r.raise_for_status()
                out[qid] = [h["doc_id"] for h in r.json()["results"]]

        await asyncio.gather(*(one(q, t) for q, t in queries.items()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", required=True)
    ap.add_argument("--baseline", required=True, help="`crossfade eval --json` output (floor)")
    ap.add_argument("--config", default=str(ROOT / "config" / "scifact.yaml"))
    ap.add_argument("--data-dir", default=str(ROOT / ".crossfade" / "scifact-replay"))
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / ".crossfade" / "replay.json"))
    args = ap.parse_args()

    port = free_port()
    env = {
        **os.environ,
        "CROSSFADE_DATA_DIR": args.data_dir,
        "CROSSFADE_SERVER__PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    beir = Path(args.beir)
    base = json.loads(Path(args.baseline).read_text())["coverage"]
    first = next(iter(base.values()))
    floor = max(first["old"]["ndcg@10"], first["bm25"]["ndcg@10"])
    qrels_test = parse_qrels((beir / "qrels.tsv").read_text().splitlines())
    qrels_train = parse_qrels((beir / "qrels-train.tsv").read_text().splitlines())
    with (beir / "queries.jsonl").open("rb") as fh:
        queries = parse_queries(fh)
    test_q = {q: t for q, t in queries.items() if q in qrels_test}
    train_q = [(q, t) for q, t in queries.items() if q in qrels_train]

    # A fresh migration each run; the embedding cache (old-model vectors) is kept.
    data = Path(args.data_dir)
    for name in ("old", "new"):
        shutil.rmtree(data / name, ignore_errors=True)
    for f in data.glob("migration.sqlite*"):
        f.unlink()

    t0 = time.monotonic()
    print("replay: building the old index and starting the migration", flush=True)
    crossfade(
        "--config",
        args.config,
        "ingest",
        "--index",
        "old",
        "--quiet",
        str(beir / "corpus.jsonl"),
        env=env,
    )
    crossfade("--config", args.config, "migrate", "start", "--quiet", env=env)
    crossfade("--config", args.config, "backfill", "off", env=env)
    crossfade("--config", args.config, "backfill", "resume", env=env)

    proxy = Proxy(args.config, env, port)
    proxy.start()
    rows: list[dict[str, Any]] = []

    def checkpoint(label: str, replayed: int) -> None:
        s = proxy.status()
        run = asyncio.run(run_queries(proxy.url, test_q, reembed=False))
        ndcg = score_run(run, qrels_test)["ndcg@10"]
        row = {
            "phase": label,
            "train_queries": replayed,
            "coverage": s["indexes"]["new"]["coverage"],
            "queue": s["queue"]["total"],
            "test_ndcg@10": ndcg,
            "floor": floor,
            "t_s": round(time.monotonic() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    try:
        checkpoint("start", 0)
        size = -(-len(train_q) // args.chunks)
        for i in range(0, len(train_q), size):
            asyncio.run(run_queries(proxy.url, dict(train_q[i : i + size]), reembed=True))
            checkpoint("lazy", min(i + size, len(train_q)))
        wait_until(lambda: proxy.status()["queue"]["total"] == 0, 1800, "lazy queue drained", 2)
        checkpoint("lazy drained", len(train_q))
        lazy_coverage = rows[-1]["coverage"]

        crossfade("--config", args.config, "backfill", "on", env=env)
        wait_until(lambda: proxy.status()["indexes"]["new"]["coverage"] >= 0.75, 1800, "75%", 2)
        checkpoint("backfill", len(train_q))
        proxy.kill9()
        print("replay: kill -9 at", rows[-1]["coverage"], flush=True)
        proxy.start()
        checkpoint("restarted", len(train_q))
        wait_until(lambda: proxy.status()["indexes"]["new"]["coverage"] >= 1.0, 1800, "100%", 2)
        checkpoint("complete", len(train_q))
        status = proxy.status()
    finally:
        proxy.stop()
    status_text = crossfade("--config", args.config, "status", env=env)
    verify = json.loads(crossfade("--config", args.config, "verify", "--sample", "200", env=env))
    report = {
        "rows": rows,
        "lazy_only_coverage": lazy_coverage,
        "min_ndcg_minus_floor": round(min(r["test_ndcg@10"] for r in rows) - floor, 4),
        "final_fingerprints": status["indexes"]["new"]["fingerprints"],
        "documents": status["indexes"]["new"]["documents"],
        "verify": verify,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(status_text)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    ok = verify["ok"] and report["min_ndcg_minus_floor"] >= 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
