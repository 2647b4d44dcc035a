"""nDCG@10 of each inference runtime of the new model on every development set, and the
default runtime's distance from torch's at 0% and 100% coverage (`make eval-runtimes`).

    python loadtest/runtimes_eval.py [--sets scifact,arguana]

Each run is `crossfade eval --simulate-coverage 0,100 --json` with the runtime chosen by the
config (env overrides). torch reuses `make eval`'s cached vectors (they are torch's); the
ONNX runs get a data dir of their own whose cache holds no new-model vector, so every
document is embedded by ONNX Runtime itself: its fingerprint is torch's, and a shared cache
would hand it torch's vectors. The int8 row is int8 queries over the fp32 documents (what
`query_runtime: onnx-int8` serves).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.config import load_settings  # noqa: E402
from proxy.embedding import load_embedder  # noqa: E402
from proxy.experiment import scratch_settings  # noqa: E402

CONFIG = ROOT / "config" / "scifact.yaml"
RUNS = {
    "torch": {"CROSSFADE_MODELS__NEW__RUNTIME": "torch", "CROSSFADE_MODELS__NEW__THREADS": "0"},
    "onnx": {"CROSSFADE_MODELS__NEW__THREADS": "2"},  # threads change speed, not vectors
    "onnx-int8 queries": {"CROSSFADE_MODELS__NEW__QUERY_RUNTIME": "onnx-int8"},
}
TOLERANCE = 0.002


def onnx_data_dir(beir: Path, work: Path, new_fp: str) -> Path:
    """A data dir for the ONNX runs: the old model's cached vectors, none of the new one's."""
    base = load_settings(CONFIG)
    src = scratch_settings(base, beir).data_path("cache/embeddings.sqlite")
    dst = scratch_settings(base.model_copy(update={"data_dir": str(work)}), beir).data_path(
        "cache/embeddings.sqlite"
    )
    if src.exists() and not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        with sqlite3.connect(dst) as db:
            db.execute("DELETE FROM vec WHERE fp = ?", [new_fp])
    return work


def evaluate(beir: Path, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "crossfade"),
            "--config",
            str(CONFIG),
            "eval",
            "--beir",
            str(beir),
            "--simulate-coverage",
            "0,100",
            "--json",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["coverage"]  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="scifact,arguana")
    ap.add_argument("--work", default=str(ROOT / ".crossfade" / "runtimes-eval"))
    args = ap.parse_args()
    new_fp = load_embedder(load_settings(CONFIG).models.new, runtime="torch").fingerprint.id
    table: dict[str, dict[str, Any]] = {}
    failed = 0
    for name in args.sets.split(","):
        beir = ROOT.parent / "shared" / "data" / name
        work = onnx_data_dir(beir, Path(args.work), new_fp)
        for runtime, env in RUNS.items():
            extra = {} if runtime == "torch" else {"CROSSFADE_DATA_DIR": str(work)}
            res = evaluate(beir, {**env, **extra})
            table[f"{name} {runtime}"] = {
                f"{system}@{pct}%": res[pct][system]["ndcg@10"]
                for pct in ("0", "100")
                for system in ("new", "crossfade")
            }
            print(f"{name:>8} {runtime:>18}: {table[f'{name} {runtime}']}", flush=True)
        for key in ("crossfade@0%", "new@100%", "crossfade@100%"):
            delta = round(table[f"{name} onnx"][key] - table[f"{name} torch"][key], 4)
            ok = abs(delta) <= TOLERANCE
            failed += not ok
            print(
                f"{'PASS' if ok else 'FAIL'}  {name} nDCG@10 {key}: onnx - torch = {delta:+.4f} "
                f"(target within {TOLERANCE})"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
