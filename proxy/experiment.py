"""Simulated-coverage evaluation on a BEIR dataset, through the product's own query path.

The old index is built with the old model (ingest, resumable). The new index is seeded exactly
as `crossfade migrate start` seeds it, then a seeded random p% of documents get their new-model
vector, growing through the requested coverages. At each coverage every judged query runs
through `Searcher.candidates` (the stores and lists the proxy serves with) and the ranked lists
are scored as five systems: old-only, new-only, BM25, plain RRF and crossfade's fusion.
Document vectors are cached on disk by (model fingerprint, text hash): a second run costs
seconds, not minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from proxy.beir import Beir
from proxy.config import Mode, Settings
from proxy.embedding import embed_documents_cached
from proxy.evaluation import score_run
from proxy.fusion import FusionParams, fuse, plain_rrf
from proxy.ingest import Progress, ingest, make_point, now_iso
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from proxy.search import Candidates, Searcher

SYSTEMS = ("old", "new", "bm25", "rrf", "crossfade")
DEPTH = 100


def system_runs(
    cands: Mapping[str, Candidates], crossfade: FusionParams, k: int
) -> dict[str, dict[str, list[str]]]:
    """Per system, per query: the ranked doc ids. Pure, so tuning can call it in a loop."""
    runs: dict[str, dict[str, list[str]]] = {s: {} for s in SYSTEMS}
    rrf = plain_rrf(k)
    for qid, c in cands.items():
        for name in ("old", "new", "bm25"):
            runs[name][qid] = c.ranked.get(name, [])[:DEPTH]
        runs["rrf"][qid] = [f.doc_id for f in fuse(c.ranked, rrf, c.migrated, DEPTH)]
        runs["crossfade"][qid] = [f.doc_id for f in fuse(c.ranked, crossfade, c.migrated, DEPTH)]
    return runs


async def _all_candidates(searcher: Searcher, queries: Mapping[str, str]) -> dict[str, Candidates]:
    sem = asyncio.Semaphore(4)

    async def one(qid: str, text: str) -> tuple[str, Candidates]:
        async with sem:
            return qid, await searcher.candidates(text, ("old", "new", "bm25"), DEPTH)

    return dict(await asyncio.gather(*(one(q, t) for q, t in queries.items())))


def simulate(
    settings: Settings,
    data: Beir,
    coverages: Sequence[int],
    seed: int = 0,
    progress: bool = True,
    on_coverage: Callable[[int, float, dict[str, Candidates], Searcher], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Returns {"<pct>": {system: metrics}}; `on_coverage` sees each step's candidates."""
    rt = Runtime(settings)
    try:
        ingest(rt, "old", data.docs, progress=progress)
        new = rt.store("new")
        new.drop()
        start_migration(rt, strategy="simulation", progress=progress)
        model = rt.model("new")
        bar = Progress("embed new", len(data.docs)) if progress else None
        vecs = embed_documents_cached(
            model, [d.text for d in data.docs], rt.embedding_cache, progress=bar
        )
        order = np.random.default_rng(seed).permutation(len(data.docs))
        searcher = rt.searcher()
        done = 0
        out: dict[str, dict[str, dict[str, float]]] = {}
        for pct in sorted(set(coverages)):
            target = round(pct / 100 * len(data.docs))
            stamp = now_iso()
            for start in range(done, target, 512):
                idx = order[start : min(start + 512, target)]
                new.upsert([make_point(rt, "new", data.docs[i], vecs[i], stamp) for i in idx])
            done = max(done, target)
            coverage = searcher.coverage.recount()
            cands = asyncio.run(_all_candidates(searcher, data.queries))
            runs = system_runs(cands, searcher.params(Mode.FUSED, coverage), settings.fusion.k)
            out[str(pct)] = {s: score_run(runs[s], data.qrels) for s in SYSTEMS}
            if on_coverage:
                on_coverage(pct, coverage, cands, searcher)
        return out
    finally:
        rt.close()


def format_table(result: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str) -> str:
    head = f"{'coverage':>8} " + " ".join(f"{s:>10}" for s in SYSTEMS)
    rows = [head]
    for pct, systems in result.items():
        rows.append(f"{pct + '%':>8} " + " ".join(f"{systems[s][metric]:>10.3f}" for s in SYSTEMS))
    return "\n".join(rows)
