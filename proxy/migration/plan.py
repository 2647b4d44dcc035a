"""`crossfade plan`: what a re-embed will cost, measured on a sample of the real corpus.

Speed is measured here (documents/s of the new model on this machine; a hosted model: through
its API, with its requests in flight and rate limits); tokens come from the model's own
tokenizer, or for a hosted model from what its API bills for the sample (`usage`); storage is
vectors (float32) plus payload as stored; the lazy-vs-backfill ETA uses the configured CPU
share (a local model)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from proxy.model import count_tokens
from proxy.runtime import Runtime


def plan(rt: Runtime, sample: int | None = None) -> dict[str, Any]:
    cfg = rt.settings
    n_sample = sample or cfg.plan.sample
    old = rt.store("old")
    docs = old.count()
    if docs == 0:
        raise RuntimeError("the old index is empty: nothing to plan")
    texts: list[str] = []
    payload_bytes = 0
    for batch in old.scroll(256, ["text", "metadata"]):
        for p in batch:
            texts.append(p["text"])
            payload_bytes += len(p["text"].encode()) + 200  # ids, hashes, stamps, metadata
        if len(texts) >= n_sample:
            break
    texts = texts[:n_sample]
    model = rt.model("new")
    model.embed_documents(texts[:4])  # warm-up
    t0 = time.perf_counter()
    billed = model.embed_billed(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    counts = count_tokens(model, texts)
    # A hosted model's sample is billed: what its API counts is what the migration costs.
    tokens_per_doc = billed.tokens / len(texts) if billed.tokens else float(np.mean(counts))
    max_length = cfg.models.new.max_length
    over = sum(c > max_length for c in counts)
    total_tokens = tokens_per_doc * docs
    dim = model.fingerprint.dim
    vec_bytes = docs * dim * 4
    payload_total = payload_bytes / len(texts) * docs
    share = cfg.migration.cpu_share
    cap = cfg.migration.max_docs_per_s
    # The CPU share binds a local model only (a hosted one waits on the network).
    budget_rate = rate if model.hosted else rate * share
    budget_rate = min(budget_rate, cap) if cap else budget_rate
    return {
        "documents": docs,
        "sample": len(texts),
        "docs_per_s_full_speed": round(rate, 1),
        "full_rebuild_s": round(docs / rate, 1),
        "backfill_eta_s_at_budget": round(docs / budget_rate, 1),
        "budget": {"cpu_share": share, "max_docs_per_s": cap or None},
        "tokens": {
            "per_doc": round(tokens_per_doc, 1),
            "total": int(total_tokens),
            "counted_by": "the API's usage (sample billed)" if billed.tokens else "tokenizer",
        },
        "truncated": {
            "max_length": max_length,
            "sampled_docs_over": int(over),
            "note": f"{over} of {len(texts)} sampled documents are longer than {max_length} "
            "tokens; the new model embeds their first tokens only (models.new.max_length)",
        },
        "api_cost": {
            "price_per_million_tokens": cfg.plan.price_per_million_tokens,
            "total": round(total_tokens / 1e6 * cfg.plan.price_per_million_tokens, 6),
            "sample_cost": round(billed.tokens / 1e6 * cfg.plan.price_per_million_tokens, 6),
            "max_spend": cfg.migration.max_spend or None,
        },
        "storage_bytes": {
            "new_vectors": vec_bytes,
            "payload_per_index": int(payload_total),
            "both_indexes_during_migration": int(
                docs * rt.store("old").info().dim * 4 + vec_bytes + 2 * payload_total  # type: ignore[union-attr]
            ),
        },
        "lazy_vs_backfill": "lazy re-embeds what searches return first (hot documents migrate "
        "within their first hit); the backfill sweep bounds the tail at the ETA above",
    }


# OpenAI's tokens-per-minute limits for text-embedding-3-small by usage tier, as its model page
# lists them (free, tiers 1-5). An account's own limits differ: pass them (`--tpm`).
OPENAI_TPM_TIERS: dict[str, int] = {
    "free": 40_000,
    "tier1": 1_000_000,
    "tier2": 1_000_000,
    "tier3": 5_000_000,
    "tier4": 5_000_000,
    "tier5": 10_000_000,
}


def throughput(
    docs: int, compute_docs_per_s: float, store_points_per_s: float | None
) -> dict[str, Any]:
    """Hours to re-embed `docs` at a compute rate, bounded by the vector store's write rate
    (one point written per document re-embedded): which of the two limits it."""
    if compute_docs_per_s <= 0:
        raise ValueError("the compute rate must be positive")
    store = store_points_per_s if store_points_per_s and store_points_per_s > 0 else None
    rate = min(compute_docs_per_s, store) if store else compute_docs_per_s
    return {
        "docs_per_s": round(rate, 1),
        "hours": round(docs / rate / 3600, 2),
        "bound_by": "vector store writes" if store and store < compute_docs_per_s else "embedding",
    }


def workers_plan(
    docs: int,
    per_worker_docs_per_s: float,
    workers: list[int],
    store_points_per_s: float | None = None,
    cost_per_worker_hour: float | None = None,
) -> list[dict[str, Any]]:
    """N workers (CPU processes or GPUs) at a measured per-worker rate, scaling linearly until
    the store's write rate binds; the cost at a price per worker-hour, if given."""
    out = []
    for n in workers:
        t = throughput(docs, per_worker_docs_per_s * n, store_points_per_s)
        row: dict[str, Any] = {"workers": n, **t}
        if cost_per_worker_hour is not None:
            row["cost"] = round(t["hours"] * n * cost_per_worker_hour, 2)
        out.append(row)
    return out


def api_plan(
    docs: int,
    tokens_per_doc: float,
    price_per_million_tokens: float,
    tpm: dict[str, int],
    store_points_per_s: float | None = None,
) -> list[dict[str, Any]]:
    """A hosted model at each tokens-per-minute limit: the rate the limit allows, the hours
    (bounded by the store's write rate) and the token cost, the same at every tier."""
    if tokens_per_doc <= 0:
        raise ValueError("tokens per document must be positive")
    cost = round(docs * tokens_per_doc / 1e6 * price_per_million_tokens, 2)
    return [
        {
            "tier": name,
            "tpm": limit,
            **throughput(docs, limit / 60 / tokens_per_doc, store_points_per_s),
            "cost": cost,
        }
        for name, limit in tpm.items()
    ]


def store_limit_workers(per_worker_docs_per_s: float, store_points_per_s: float) -> float:
    """How many workers at the measured rate it takes to reach the store's write rate."""
    return round(store_points_per_s / per_worker_docs_per_s, 1)


def capacity(
    docs: int,
    tokens_per_doc: float,
    cpu_docs_per_s: float,
    store_points_per_s: float | None,
    price_per_million_tokens: float,
    workers: list[int],
    gpu_docs_per_s: float | None = None,
    gpus: list[int] | None = None,
    tpm: dict[str, int] | None = None,
    cpu_worker_hour: float | None = None,
    gpu_hour: float | None = None,
) -> dict[str, Any]:
    """The capacity plan for `docs`: CPU workers at the measured rate, GPUs at a given rate
    (not measurable without one: a parameter, never a guess), the API's tiers; and where the
    store's write rate becomes the limit."""
    out: dict[str, Any] = {
        "documents": docs,
        "tokens_per_doc": round(tokens_per_doc, 1),
        "rates": {
            "cpu_worker_docs_per_s": cpu_docs_per_s,
            "gpu_docs_per_s": gpu_docs_per_s,
            "store_points_per_s": store_points_per_s,
        },
        "cpu_workers": workers_plan(
            docs, cpu_docs_per_s, workers, store_points_per_s, cpu_worker_hour
        ),
        "openai": api_plan(
            docs,
            tokens_per_doc,
            price_per_million_tokens,
            tpm or OPENAI_TPM_TIERS,
            store_points_per_s,
        ),
    }
    if gpu_docs_per_s:
        out["gpus"] = workers_plan(
            docs, gpu_docs_per_s, gpus or [1, 8, 32], store_points_per_s, gpu_hour
        )
    if store_points_per_s:
        out["store_limit"] = {
            "points_per_s": store_points_per_s,
            "hours_at_store_rate": round(docs / store_points_per_s / 3600, 2),
            "cpu_workers_to_reach_it": store_limit_workers(cpu_docs_per_s, store_points_per_s),
            "gpus_to_reach_it": store_limit_workers(gpu_docs_per_s, store_points_per_s)
            if gpu_docs_per_s
            else None,
        }
    return out
