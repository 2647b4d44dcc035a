"""How much of an exact top-100 Chroma's HNSW finds, as crossfade searches a new collection
mid-migration: a share of the records hold real vectors, the rest placeholders filtered out
(`crossfade:dense`), at each coverage and search breadth (`ef_search`).

    python loadtest/chroma_recall.py \
        --cache .crossfade/scifact/eval/scifact-*/cache/embeddings.sqlite

The vectors are a data set's new-model document vectors from an eval's embedding cache (run
`crossfade eval` first); the queries are 200 of them, jittered (seeded), so no model is loaded.
Each record is written as the Chroma store writes it (a placeholder is `placeholder()`), into
an embedded Chroma in a temporary directory. Recall = |Chroma's top-100 & exact top-100| / 100.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import chromadb
import numpy as np
from chromadb.config import Settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.store.chroma import COSINE, DENSE, placeholder  # noqa: E402

DEPTH = 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="an eval's cache/embeddings.sqlite")
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="the new model's name")
    ap.add_argument("--coverage", default="25,50,75,100")
    ap.add_argument("--ef", default="100,400", help="ef_search values")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    db = sqlite3.connect(args.cache)
    rows = db.execute("SELECT sha, v FROM vec WHERE fp LIKE ?", (f"{args.model}@%",)).fetchall()
    if not rows:
        raise SystemExit(f"no {args.model} vectors in {args.cache}")
    vecs = np.stack([np.frombuffer(v, dtype=np.float32) for _, v in rows])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.array([sha[:16] for sha, _ in rows])
    n, dim = vecs.shape
    rng = np.random.default_rng(0)
    queries = vecs[rng.choice(n, args.queries)] + rng.normal(0, 0.02, (args.queries, dim))
    print(f"{n} vectors of {args.model}, {args.queries} queries, top-{DEPTH}")
    print("| coverage | ef_search | recall@100 mean | lowest | ms/query |\n|---|---|---|---|---|")
    for pct in (int(x) for x in args.coverage.split(",")):
        dense = np.zeros(n, dtype=bool)
        dense[rng.permutation(n)[: round(pct / 100 * n)]] = True
        stored = np.stack(
            [v if d else placeholder(i, dim) for v, d, i in zip(vecs, dense, ids, strict=True)]
        )
        for ef in (int(x) for x in args.ef.split(",")):
            client = chromadb.PersistentClient(
                tempfile.mkdtemp(), settings=Settings(anonymized_telemetry=False)
            )
            col = client.create_collection(
                "recall",
                configuration={"hnsw": {**COSINE["hnsw"], "ef_search": ef}},  # type: ignore[arg-type]
                embedding_function=None,
            )
            for s in range(0, n, 1000):
                col.add(
                    ids=list(ids[s : s + 1000]),
                    embeddings=stored[s : s + 1000],
                    metadatas=[{DENSE: bool(d)} for d in dense[s : s + 1000]],
                )
            recalls, t0 = [], time.perf_counter()
            for q in queries:
                got = col.query(
                    query_embeddings=[q.astype(np.float32)],
                    n_results=DEPTH,
                    where={DENSE: True},
                    include=[],
                )["ids"][0]
                exact = ids[dense][np.argsort(-(vecs[dense] @ q))[:DEPTH]]
                recalls.append(len(set(exact) & set(got)) / len(exact))
            ms = (time.perf_counter() - t0) / len(queries) * 1000
            print(f"| {pct}% | {ef} | {np.mean(recalls):.4f} | {min(recalls):.2f} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
