"""`crossfade plan`: what a re-embed will cost, measured on a sample of the real corpus.

Speed is measured here (documents/s of the new model on this machine); tokens come from the
model's own tokenizer; storage is vectors (float32) plus payload as stored; the lazy-vs-backfill
ETA uses the configured CPU share."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from proxy.runtime import Runtime


def _token_counts(model: Any, texts: list[str]) -> list[int]:
    tok = getattr(model, "tokenizer", None) or getattr(
        getattr(model, "model", None), "tokenizer", None
    )
    if tok is None:
        return [max(1, len(t) // 4) for t in texts]  # the usual ~4 characters/token rule
    if hasattr(tok, "encode_batch"):  # tokenizers.Tokenizer (ONNX loader)
        return [len(e.ids) for e in tok.encode_batch(texts)]
    # Counted untruncated, on purpose: verbose=False keeps the tokenizer from warning about
    # it ("longer than the specified maximum"); the plan states the truncation instead.
    ids = tok(texts, add_special_tokens=True, verbose=False)["input_ids"]
    return [len(x) for x in ids]


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
    model.embed_documents(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    counts = _token_counts(model, texts)
    tokens_per_doc = float(np.mean(counts))
    max_length = cfg.models.new.max_length
    over = sum(c > max_length for c in counts)
    total_tokens = tokens_per_doc * docs
    dim = model.fingerprint.dim
    vec_bytes = docs * dim * 4
    payload_total = payload_bytes / len(texts) * docs
    share = cfg.migration.cpu_share
    cap = cfg.migration.max_docs_per_s
    budget_rate = min(rate * share, cap) if cap else rate * share
    return {
        "documents": docs,
        "sample": len(texts),
        "docs_per_s_full_speed": round(rate, 1),
        "full_rebuild_s": round(docs / rate, 1),
        "backfill_eta_s_at_budget": round(docs / budget_rate, 1),
        "budget": {"cpu_share": share, "max_docs_per_s": cap or None},
        "tokens": {"per_doc": round(tokens_per_doc, 1), "total": int(total_tokens)},
        "truncated": {
            "max_length": max_length,
            "sampled_docs_over": int(over),
            "note": f"{over} of {len(texts)} sampled documents are longer than {max_length} "
            "tokens; the new model embeds their first tokens only (models.new.max_length)",
        },
        "api_cost": {
            "price_per_million_tokens": cfg.plan.price_per_million_tokens,
            "total": round(total_tokens / 1e6 * cfg.plan.price_per_million_tokens, 6),
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
