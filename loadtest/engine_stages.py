"""What each engine search of a fused query costs on built shards, cold and warm.

    python loadtest/engine_stages.py DATA_DIR [--warm] [--queries 200]

On the shards of DATA_DIR (e.g. `.crossfade/scale/1000000-hnsw`, left by `make scale`), times
the engine calls a fused query makes (dense search of each index, BM25 of the new one, depth
100, no payload) over the same queries twice: the first round right after the shards load,
the second once they have been searched. With `--warm`, the indexes are warmed first, as
`crossfade serve` does before it accepts requests (`VectorStore.warm`). Run it once after
`sync; echo 1 > /proc/sys/vm/drop_caches` (root) and once more with `--warm` after another
drop to see what a cold page cache costs (docs/measurements/scale.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.bench import queries  # noqa: E402
from proxy.api.lifecycle import warm_indexes  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--warm", action="store_true", help="warm the indexes first, as serve does")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--beir", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    args = ap.parse_args()
    settings = load_settings(ROOT / "config" / "scifact.yaml", data_dir=args.data_dir)
    qs = queries(Path(args.beir))[-args.queries :]
    out: dict[str, object] = {"data_dir": args.data_dir, "queries": len(qs)}
    with Runtime(settings) as rt:
        old, new = rt.store("old"), rt.store("new")
        vo = rt.model("old").embed_queries(qs)
        vn = rt.model("new").embed_queries(qs)
        sparse = [rt.bm25.query(q) for q in qs]
        if args.warm:
            t0 = time.perf_counter()
            read = warm_indexes(rt)  # as `crossfade serve` does, within its budget
            out["warm"] = {"mb": round(read / 2**20), "s": round(time.perf_counter() - t0, 1)}
        calls = {
            "dense_old": lambda i: old.search_dense(vo[i], 100),
            "dense_new": lambda i: new.search_dense(vn[i], 100),
            "bm25": lambda i: new.search_sparse(sparse[i], 100),
        }
        for rnd in ("first", "second"):
            took: dict[str, list[float]] = {k: [] for k in calls}
            for i in range(len(qs)):
                for name, call in calls.items():
                    t0 = time.perf_counter()
                    call(i)
                    took[name].append(time.perf_counter() - t0)
            out[f"{rnd}_round_median_ms"] = {
                k: round(1000 * statistics.median(v), 2) for k, v in took.items()
            }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
