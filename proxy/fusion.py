"""Coverage-aware weighted reciprocal rank fusion. Pure: no I/O, no models.

    score(d) = sum over lists i of  w_i / (k + rank_i(d))      (ranks start at 1)

Lists: `old` (old model over the old index, which covers every document), `new` (new model over
the new index, which holds only migrated documents) and `bm25` (sparse, covers every document).

Plain RRF is unfair during a migration: a migrated document can appear in three lists, an
unmigrated one in two, so migrated documents win on coverage rather than relevance. Two fixes,
both on by default:

* imputation: a document with no new vector gets, as its new-list rank, its best rank among
  the lists named in `impute_from` (its old-list rank, its BM25 rank, or the better of both);
* rank scaling: the new list ranks only the migrated share c of the corpus, so rank r there
  estimates rank r / c among all documents.

The weights slide linearly with coverage from `weights_at_0` to `weights_at_100`: at 100% the
old list adds nothing the new list lacks, and a weak old model only dilutes the others.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from proxy.config import FusionConfig, Weights

LISTS = ("old", "new", "bm25")


@dataclass(frozen=True)
class Fused:
    doc_id: str
    score: float
    ranks: dict[str, int | None]
    migrated: bool
    imputed: bool = False


@dataclass(frozen=True)
class FusionParams:
    k: int
    weights: Mapping[str, float]
    impute_missing: bool = True
    scale_new_ranks: bool = True
    coverage: float = 1.0
    lists: tuple[str, ...] = field(default=LISTS)
    impute_from: tuple[str, ...] = ("old", "bm25")


@dataclass(frozen=True)
class Profile:
    """The list weights as a function of coverage: knots (coverage 0..1, weights), linear in
    between, and the lists whose best rank stands in for a missing new rank. The config's
    label-free rule gives two knots (0% and 100%); a fit on labelled queries gives one knot per
    simulated coverage (proxy/tuning.py)."""

    knots: tuple[tuple[float, Mapping[str, float]], ...]
    impute_from: tuple[str, ...]
    source: str = "default rule"


def default_profile(cfg: FusionConfig) -> Profile:
    lo: Weights = cfg.weights_at_0
    hi: Weights = cfg.weights_at_100
    return Profile(
        knots=((0.0, lo.model_dump()), (1.0, hi.model_dump())),
        impute_from=tuple(cfg.impute_from),
    )


def weights_at(profile: Profile, coverage: float) -> dict[str, float]:
    c = min(max(coverage, 0.0), 1.0)
    knots = profile.knots
    if c <= knots[0][0]:
        return {n: float(knots[0][1].get(n, 0.0)) for n in LISTS}
    for (c0, w0), (c1, w1) in zip(knots, knots[1:], strict=False):
        if c <= c1:
            t = (c - c0) / (c1 - c0) if c1 > c0 else 1.0
            return {n: (1 - t) * w0.get(n, 0.0) + t * w1.get(n, 0.0) for n in LISTS}
    return {n: float(knots[-1][1].get(n, 0.0)) for n in LISTS}


def params_for(cfg: FusionConfig, coverage: float, profile: Profile | None = None) -> FusionParams:
    """Fusion at `coverage`: the fitted profile when there is one, else the config's rule."""
    profile = profile or default_profile(cfg)
    return FusionParams(
        k=cfg.k,
        weights=weights_at(profile, coverage),
        impute_missing=cfg.impute_missing,
        scale_new_ranks=cfg.scale_new_ranks,
        coverage=coverage,
        impute_from=profile.impute_from,
    )


def plain_rrf(k: int, lists: tuple[str, ...] = LISTS) -> FusionParams:
    """Equal weights, no coverage awareness: the baseline crossfade must beat."""
    return FusionParams(
        k=k,
        weights={n: 1.0 for n in lists},
        impute_missing=False,
        scale_new_ranks=False,
        lists=lists,
    )


def fuse(
    ranked: Mapping[str, Sequence[str]],
    params: FusionParams,
    migrated: Collection[str],
    limit: int,
) -> list[Fused]:
    """Fuse ranked doc-id lists. `migrated` = docs that hold a new-model vector."""
    ranks: dict[str, dict[str, int]] = {}
    for name in params.lists:
        for r, doc in enumerate(ranked.get(name, ()), start=1):
            ranks.setdefault(doc, {}).setdefault(name, r)

    scale = 1.0 / params.coverage if params.scale_new_ranks and params.coverage > 0 else 1.0
    w, k = params.weights, params.k
    impute = params.impute_missing and "new" in params.lists
    # Scored as plain tuples, a Fused built only for the `limit` kept: this runs on the event
    # loop for every query, over a few hundred candidates.
    scored: list[tuple[float, int, str, bool]] = []
    for doc, rs in ranks.items():
        score = 0.0
        for name, r in rs.items():
            score += w.get(name, 0.0) / (k + (r * scale if name == "new" else r))
        imputed = False
        if impute and doc not in migrated:
            proxies = [rs[n] for n in params.impute_from if n in rs]
            if proxies:
                score += w.get("new", 0.0) / (k + min(proxies))
                imputed = True
        scored.append((-score, min(rs.values()), doc, imputed))
    # Ties break on the best single rank, then doc id, so results are deterministic.
    return [
        Fused(
            doc_id=doc,
            score=-neg,
            ranks={n: ranks[doc].get(n) for n in params.lists},
            migrated=doc in migrated,
            imputed=imputed,
        )
        for neg, _, doc, imputed in heapq.nsmallest(limit, scored)
    ]
