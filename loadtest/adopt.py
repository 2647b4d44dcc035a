"""Adopting a large existing collection: time to start the migration, peak memory, and proof
that the old collection is unchanged.

    python loadtest/adopt.py [--points 100000] [--distinct 1000]

An application's collection is built in qdrant-client's local mode (in memory, in this
process; no Qdrant server runs here): --points points with integer ids, the unnamed vector
and LangChain's payload layout (`page_content` + `metadata`). Texts are synthetic, --distinct
of them, each repeated; their vectors are precomputed once with the old model
(paraphrase-MiniLM-L3-v2), so the identity check finds the model it expects. Then
`migrate start --into` runs as the CLI runs it (identity check, then streaming every point into
the new collection with its BM25 vector). Reported: the time of that start, the process's peak
RSS, and the old collection's point count and a sha256 over every point's id, payload and
vector, before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from qdrant_client import models as qm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.config import load_settings  # noqa: E402
from proxy.migration.start import start_migration  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402
from proxy.store.server import make_client, release_client  # noqa: E402

WORDS = [
    "vector",
    "index",
    "model",
    "query",
    "shard",
    "payload",
    "token",
    "cosine",
    "migrate",
    "embed",
    "search",
    "recall",
    "alias",
    "collection",
    "backfill",
    "cutover",
    "rollback",
    "latency",
    "segment",
    "filter",
]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=12)) + f" ({i})" for i in range(n)]


def checksum(client, collection: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    h = hashlib.sha256()
    n, offset = 0, None
    while True:
        recs, offset = client.scroll(
            collection, limit=2048, offset=offset, with_payload=True, with_vectors=True
        )
        for r in recs:
            vec = np.asarray(r.vector, dtype=np.float32).tobytes()
            h.update(json.dumps([r.id, r.payload], sort_keys=True).encode() + vec)
            n += 1
        if offset is None:
            return n, h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--distinct", type=int, default=1000)
    ap.add_argument("--data", default=str(ROOT / ".crossfade" / "adopt-load"))
    args = ap.parse_args()

    settings = load_settings(
        ROOT / "config" / "demo.yaml",
        data_dir=args.data,
        indexes={
            "old": {"backend": "qdrant", "url": ":memory:", "collection": "app", "vector": "",
                    "adopt": {}},
            "new": {"backend": "qdrant", "url": ":memory:", "collection": "app_l6"},
        },
    )  # fmt: skip
    import shutil

    shutil.rmtree(args.data, ignore_errors=True)
    client = make_client(settings.indexes.old)  # the same in-memory instance crossfade opens
    rt = Runtime(settings)
    texts = synthetic_texts(args.distinct)
    t0 = time.perf_counter()
    vecs = rt.model("old").embed_documents(texts)
    print(f"precomputed {len(texts)} vectors in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    client.create_collection(
        "app", vectors_config=qm.VectorParams(size=vecs.shape[1], distance=qm.Distance.COSINE)
    )
    t0 = time.perf_counter()
    for start in range(0, args.points, 2048):
        ids = range(start, min(start + 2048, args.points))
        client.upsert(
            "app",
            [
                qm.PointStruct(
                    id=i,
                    vector=vecs[i % args.distinct].tolist(),
                    payload={
                        "page_content": texts[i % args.distinct],
                        "metadata": {"n": i, "group": i % 17},
                    },
                )
                for i in ids
            ],
            wait=True,
        )
    print(f"built {args.points} points in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    rt.model("new")  # loaded before the clock starts, as `crossfade serve` would have it
    before = checksum(client, "app")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    out = start_migration(rt, progress=True, into="app_l6")
    took = time.perf_counter() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after = checksum(client, "app")
    report = {
        "points": args.points,
        "start_seconds": round(took, 1),
        "seeded": out["seeded"],
        "identity": out["adopted"]["identity"],
        "peak_rss_mib": {"before_start": round(rss_before), "after_start": round(rss_after)},
        "old_before": {"count": before[0], "sha256": before[1]},
        "old_after": {"count": after[0], "sha256": after[1]},
        "old_unchanged": before == after,
    }
    print(json.dumps(report, indent=2))
    rt.close()
    release_client(settings.indexes.old)


if __name__ == "__main__":
    main()
