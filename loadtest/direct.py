"""The direct pipeline a team would write without crossfade, as the benchmark's baseline:
embed the query with the new model, one Qdrant search (same engine, same data), return.

    python loadtest/direct.py --shard DIR --port 8100 [--config config/scifact.yaml]

A plain FastAPI app: a sync route (FastAPI runs it in its thread pool), the model called per
request, the search returning payloads. No cache, no batching, no fusion.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import qdrant_edge as qe
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.config import load_settings  # noqa: E402
from proxy.embedding import load_embedder  # noqa: E402


class Query(BaseModel):
    query: str
    k: int = 10
    with_text: bool = True


def create(shard_dir: str, config: str) -> FastAPI:
    settings = load_settings(config)
    # The pipeline as teams write it: sentence-transformers on torch at its default threads,
    # whatever runtime the proxy's config chooses.
    model = load_embedder(settings.models.new.model_copy(update={"threads": 0}), runtime="torch")
    shard = qe.EdgeShard.load(shard_dir)
    vector = settings.indexes.new.vector
    app = FastAPI()

    @app.post("/search")
    def search(q: Query) -> dict:
        vec = model.embed_queries([q.query])[0].tolist()
        fields = ["doc_id", "text", "metadata"] if q.with_text else ["doc_id", "metadata"]
        hits = shard.query(
            qe.QueryRequest(
                limit=q.k, query=qe.Query.Nearest(vec, using=vector), with_payload=fields
            )
        )
        return {
            "mode": "direct",
            "results": [
                {"doc_id": h.payload["doc_id"], "score": h.score, **h.payload} for h in hits
            ],
        }

    @app.get("/readyz")
    def ready() -> dict:
        return {"ready": True}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard", required=True)
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--config", default=str(ROOT / "config" / "scifact.yaml"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    uvicorn.run(
        create(args.shard, args.config), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
