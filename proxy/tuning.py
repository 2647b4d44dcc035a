"""Fit fusion weights on a labelled *train* split (never on the test queries).

Ranked lists are computed once per coverage through the product's query path; the grid search
then only re-fuses, which is cheap. The weights at 100% coverage are fitted first (they alone
decide that end), then the weights at 0%, the imputation source and rank scaling are fitted on
the partial coverages, where both ends interpolate. Among settings that never fall below the
best single baseline (old-only or BM25) at any coverage, the one with the best mean nDCG@10
wins; if none holds that floor, the one closest to it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.beir import Beir
from proxy.config import FusionConfig, Settings, Weights
from proxy.evaluation import score_run
from proxy.experiment import DEPTH, simulate
from proxy.fusion import fuse, params_for
from proxy.search import Candidates

GRID_OLD = (0.0, 0.1, 0.2, 0.4)
GRID_NEW = (0.3, 0.6, 1.0, 1.5)
IMPUTE_FROM = (["old"], ["bm25"], ["old", "bm25"])
COVERAGES = (0, 25, 50, 75, 100)

Steps = Mapping[int, tuple[float, Mapping[str, Candidates]]]


def ndcg_at(
    steps: Steps, cfg: FusionConfig, qrels: Mapping[str, Mapping[str, int]], pcts: Sequence[int]
) -> list[float]:
    out = []
    for pct in pcts:
        coverage, cands = steps[pct]
        params = params_for(cfg, coverage)
        run = {
            q: [f.doc_id for f in fuse(c.ranked, params, c.migrated, DEPTH)]
            for q, c in cands.items()
        }
        out.append(score_run(run, qrels)["ndcg@10"])
    return out


def tune(settings: Settings, data: Beir, seed: int = 0) -> dict[str, Any]:
    steps: dict[int, tuple[float, dict[str, Candidates]]] = {}

    def keep(pct: int, coverage: float, cands: dict[str, Candidates], _: Any) -> None:
        steps[pct] = (coverage, cands)

    baseline = simulate(settings, data, COVERAGES, seed=seed, on_coverage=keep)
    floor = {p: max(baseline[str(p)][s]["ndcg@10"] for s in ("old", "bm25")) for p in COVERAGES}
    base = settings.fusion

    hi = max(
        (Weights(old=wo, new=wn, bm25=1.0) for wo, wn in itertools.product(GRID_OLD, GRID_NEW)),
        key=lambda w: ndcg_at(
            steps, base.model_copy(update={"weights_at_100": w}), data.qrels, [100]
        )[0],
    )
    partial = [p for p in COVERAGES if p < 100]
    best: tuple[tuple[bool, float], FusionConfig] | None = None
    for wo, wn, imp, scale in itertools.product(GRID_OLD, GRID_NEW, IMPUTE_FROM, (True, False)):
        cfg = base.model_copy(
            update={
                "weights_at_100": hi,
                "weights_at_0": Weights(old=wo, new=wn, bm25=1.0),
                "impute_from": imp,
                "scale_new_ranks": scale,
            }
        )
        scores = ndcg_at(steps, cfg, data.qrels, partial)
        margin = min(s - floor[p] for s, p in zip(scores, partial, strict=True))
        key = (margin >= 0, sum(scores) / len(scores) if margin >= 0 else margin)
        if best is None or key > best[0]:
            best = (key, cfg)
    assert best is not None
    tuned = best[1]
    final = ndcg_at(steps, tuned, data.qrels, list(COVERAGES))
    return {
        "fusion": tuned.model_dump(
            include={"weights_at_0", "weights_at_100", "impute_from", "scale_new_ranks"}
        ),
        "train_ndcg@10": {
            str(p): {
                "crossfade_tuned": round(score, 4),
                **{s: baseline[str(p)][s]["ndcg@10"] for s in ("old", "new", "bm25", "rrf")},
            }
            for p, score in zip(COVERAGES, final, strict=True)
        },
    }
