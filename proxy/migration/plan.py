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
