"""The same simulated migration on two stores: `crossfade eval` on edge shards and on Chroma
collections (an embedded Chroma under the eval directory, or a server at --chroma-url), every
system's nDCG@10 compared at every coverage. The fusion must not depend on the store: exits 1
where a figure differs by more than --tolerance.

    python loadtest/eval_backends.py --beir ../shared/data/scifact [--chroma-url URL]

Both runs read the same embedding cache (the eval directory's), so only the first run of a
data set embeds anything. Prints a markdown table (edge, chroma, difference) per system and
coverage, and the largest difference; --json FILE also writes every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.config import load_settings  # noqa: E402
from proxy.experiment import evaluate  # noqa: E402

METRIC = "ndcg@10"


def compare(edge: dict[str, Any], chroma: dict[str, Any]) -> tuple[list[str], float]:
    """Markdown rows (system, coverage: edge, chroma, difference) and the largest |difference|.
    Pure."""
    rows = ["| system | coverage | edge | chroma | chroma - edge |", "|---|---|---|---|---|"]
    worst = 0.0
    systems = list(next(iter(edge.values())))
    for system in systems:
        for pct in edge:
            a, b = edge[pct][system][METRIC], chroma[pct][system][METRIC]
            worst = max(worst, abs(b - a))
            rows.append(f"| {system} | {pct}% | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    return rows, worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beir", required=True, help="BEIR dir (read, never copied)")
    ap.add_argument("--config", default=str(ROOT / "config" / "scifact.yaml"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--coverage", default="0,25,50,75,100")
    ap.add_argument("--chroma-url", help="a Chroma server (default: embedded, under the eval dir)")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--json", metavar="FILE", help="write every figure of both runs")
    args = ap.parse_args()
    settings = load_settings(args.config)
    coverages = [int(x) for x in args.coverage.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for backend, url in (("edge", None), ("chroma", args.chroma_url)):
        t0 = time.monotonic()
        ev = evaluate(
            settings, args.beir, args.split, coverages, progress=False, backend=backend, url=url
        )
        results[backend] = ev.result
        print(f"{backend}: {ev.docs} docs, {len(ev.scored)} queries, {time.monotonic() - t0:.0f} s")
    rows, worst = compare(results["edge"], results["chroma"])
    print("\n".join(rows))
    print(f"largest |chroma - edge| {METRIC}: {worst:.4f} (tolerance {args.tolerance})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
