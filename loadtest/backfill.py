"""Backfill docs/s at the default budget: today's worker (torch, batches of 32 as claimed)
against the default runtime (ONNX Runtime, a window of documents sorted by length), one run.

    python loadtest/backfill.py [--seconds 20] [--rounds 3]

Both arms start from one prepared migration of a BEIR set (`--beir`, SciFact by default) at
0% (old index full, new index seeded, no new vectors), each on a copy of its own, so both sweep
the same documents in the same order. What length-sorted batches can save depends on the
passages: 72% of SciFact's reach the 256-token limit, 23% of ArguAna's. The real re-embed
worker (`Reembedder.run`) runs at the configured budget (`cpu_share`, `threads`, `nice`) for
`--seconds` and to the end of the rest its budget owes, the arms alternating for `--rounds`
rounds (the order flipped every round); docs/s = documents written / wall time, rests included.
No query load: the machine's spare cores are what the budget shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.beir import load_beir  # noqa: E402
from proxy.config import Settings, load_settings  # noqa: E402
from proxy.experiment import scratch_settings, simulate_steps  # noqa: E402
from proxy.migration.worker import Reembedder  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402

CONFIG = ROOT / "config" / "scifact.yaml"


def arms(base: Settings) -> dict[str, dict[str, Any]]:
    """Per arm: updates to the new model's config and to the migration config."""
    mig = base.migration
    return {
        # What the worker did before runtimes: torch, claiming `batch_size` documents a step.
        "torch (before)": {
            "model": {"runtime": "torch", "threads": 0},
            "migration": {"sort_window": mig.batch_size},
        },
        "default": {"model": {}, "migration": {}},
    }


def arm_settings(base: Settings, data_dir: Path, change: dict[str, Any]) -> Settings:
    models = base.models.model_copy(
        update={"new": base.models.new.model_copy(update=change["model"])}
    )
    return base.model_copy(
        update={
            "data_dir": str(data_dir),
            "models": models,
            "migration": base.migration.model_copy(update=change["migration"]),
        }
    )


async def _round(worker: Reembedder, seconds: float) -> tuple[int, float]:
    """Run the real worker loop for about `seconds`: (documents written, wall seconds).

    The round ends when the worker starts a step after `seconds`, i.e. once the rest owed for
    its last step is served: ending at a fixed time instead would cut that rest short and
    favour long steps (a 512-document window works ~25 s, then rests as long). The step just
    started is neither counted nor timed; it finishes before the next round begins."""
    loop = asyncio.get_running_loop()
    start = worker.stats.processed
    t0 = loop.time()
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(seconds)
    while worker.stats.busy:  # the step in flight
        await asyncio.sleep(0.01)
    while not worker.stats.busy:  # its rest
        await asyncio.sleep(0.01)
    wall, docs = loop.time() - t0, worker.stats.processed - start
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await loop.run_in_executor(worker.executor, lambda: None)  # the uncounted step is done
    return docs, wall


def measure(beir: Path, work: Path, seconds: float, rounds: int) -> dict[str, Any]:
    base = load_settings(CONFIG)
    prepared = work / "prepared"
    shutil.rmtree(work, ignore_errors=True)
    # The evaluation's cached vectors (`make eval`, `make bench`): preparing costs seconds.
    cache = scratch_settings(base, beir).data_path("cache")
    if cache.exists():
        shutil.copytree(cache, prepared / "cache")
    data = load_beir(beir, "test")
    simulate_steps(
        base.model_copy(update={"data_dir": str(prepared)}),
        data,
        [0],
        progress=False,
        queries=dict(list(data.queries.items())[:1]),
    )
    runtimes, workers, wall, docs = {}, {}, {}, {}
    for name, change in arms(base).items():
        d = work / name.split()[0]
        shutil.copytree(prepared, d)
        rt = Runtime(arm_settings(base, d, change))
        rt.model("new")  # loaded (and an export made) before the clock starts
        runtimes[name], workers[name], wall[name], docs[name] = rt, Reembedder(rt), 0.0, 0
    names = list(workers)
    try:
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                n, took = asyncio.run(_round(workers[name], seconds))
                docs[name] += n
                wall[name] += took
    finally:
        for rt in runtimes.values():
            rt.close()
    out: dict[str, Any] = {}
    for name in workers:
        out[name] = {
            "docs": docs[name],
            "seconds": round(wall[name], 1),
            "docs_per_s": round(docs[name] / wall[name], 2),
            "runtime": runtimes[name].settings.models.new.runtime,
        }
    out["budget"] = base.migration.model_dump(
        include={"cpu_share", "threads", "nice", "batch_size", "sort_window", "max_docs_per_s"}
    )
    out["ratio"] = round(out["default"]["docs_per_s"] / out["torch (before)"]["docs_per_s"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--work", default=str(ROOT / ".crossfade" / "bench-backfill"))
    ap.add_argument("--seconds", type=float, default=20.0, help="per arm per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    out = measure(Path(args.beir), Path(args.work), args.seconds, args.rounds)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
