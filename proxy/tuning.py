"""Fit the fusion to one corpus and model pair on labelled queries. Pure: no I/O, no models.

The ranked lists of every fitting query at each simulated coverage come in (`Steps`, computed
once through the product's query path); the fit only re-fuses them, which is cheap. At each
coverage knot it picks the list weights with the best nDCG@10 on the fitting queries from a
grid that holds every fixed pipeline the fusion must not lose to (old only, new only, BM25
only, equal-weight RRF) and the blends between them; the imputation source is chosen once for
all knots. Among the weights the fitting queries cannot tell apart from the best (within one
standard error of the paired per-query difference), the fit takes those closest to the
label-free rule: a small labelled set moves the fusion only as far as its evidence carries.

Discipline: the queries fitted on are never the queries scored. `split_for_fitting` gives the
data set's train split when it has one, otherwise a deterministic half of the labelled queries
chosen by a hash of each query id; the other half is the only one any figure is reported on.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from proxy.evaluation import Qrels
from proxy.fusion import LISTS, Profile, weights_at
from proxy.search import Candidates

# pct -> (coverage counted in the index, candidates of every query)
Steps = Mapping[int, tuple[float, Mapping[str, Candidates]]]
LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
IMPUTE_FROM: tuple[tuple[str, ...], ...] = (("old", "bm25"), ("old",), ("bm25",))
# Fewer fitting queries than this fit noise, not the corpus: the label-free rule is kept.
MIN_FIT_QUERIES = 50
# Fitted nDCG@10 within this of the best always counts as a tie, however many queries.
TIE = 0.002


def grid() -> np.ndarray:
    """Weights (old, new, bm25) up to scale (RRF's order does not change when all weights are
    multiplied by one factor): every combination of LEVELS whose largest weight is 1."""
    rows = [w for w in itertools.product(LEVELS, repeat=3) if max(w) == 1.0]
    return np.array(rows, dtype=np.float64)


def query_hash_half(qid: str) -> int:
    """0 or 1, fixed by the query id alone (not by the order of a file)."""
    return hashlib.sha256(qid.encode()).digest()[0] & 1


@dataclass(frozen=True)
class FitSplit:
    fit: Qrels
    score: Qrels
    how: str


def split_for_fitting(scored: Qrels, train: Qrels | None) -> FitSplit:
    """Fit on `train` when there is one; else on the half of `scored` whose query-id hash is 0,
    scoring only the other half."""
    if train:
        overlap = set(train) & set(scored)
        return FitSplit(
            fit={q: r for q, r in train.items() if q not in overlap},
            score=scored,
            how=f"fitted on the train split ({len(train) - len(overlap)} queries), "
            f"scored on the {len(scored)} evaluation queries",
        )
    fit = {q: r for q, r in scored.items() if query_hash_half(q) == 0}
    score = {q: r for q, r in scored.items() if query_hash_half(q) == 1}
    return FitSplit(
        fit=fit,
        score=score,
        how=f"no train split: fitted on {len(fit)} queries (sha256 of the query id even), "
        f"scored on the other {len(score)}",
    )


@dataclass
class _Query:
    contrib: np.ndarray  # candidates x 3: 1/(k + rank) per list (0 where absent)
    imputed: dict[tuple[str, ...], np.ndarray]  # candidates: 1/(k + best proxy rank) if unmigrated
    gains: np.ndarray  # candidates: relevance grade (gain)
    idcg: float


_DISCOUNT = 1.0 / np.log2(np.arange(2, 12))


def _idcg(rel: Mapping[str, int]) -> float:
    ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:10]
    return sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def _features(cands: Mapping[str, Candidates], qrels: Qrels, k: int) -> list[_Query]:
    out = []
    for qid, rel in qrels.items():
        idcg = _idcg(rel)
        c = cands.get(qid)
        if c is None or idcg == 0:
            out.append(_Query(np.zeros((0, 3)), {}, np.zeros(0), idcg))
            continue
        ranks: dict[str, dict[str, int]] = {}
        for name in LISTS:
            for r, doc in enumerate(c.ranked.get(name, ()), start=1):
                ranks.setdefault(doc, {}).setdefault(name, r)
        docs = list(ranks)
        contrib = np.array(
            [[1.0 / (k + ranks[d][n]) if n in ranks[d] else 0.0 for n in LISTS] for d in docs]
        )
        imputed = {}
        for src in IMPUTE_FROM:
            col = []
            for d in docs:
                proxies = [ranks[d][n] for n in src if n in ranks[d]]
                col.append(1.0 / (k + min(proxies)) if proxies and d not in c.migrated else 0.0)
            imputed[src] = np.array(col)
        gains = np.array([max(rel.get(d, 0), 0) for d in docs], dtype=np.float64)
        out.append(_Query(contrib, imputed, gains, idcg))
    return out


def ndcg_by_weights(
    queries: Sequence[_Query], weights: np.ndarray, src: tuple[str, ...]
) -> np.ndarray:
    """nDCG@10 of each query (rows) under each row of `weights` (old, new, bm25) (columns); a
    query whose judged documents are all missing from the lists scores 0, as in BEIR."""
    out = np.zeros((len(queries), len(weights)))
    for i, q in enumerate(queries):
        if q.idcg == 0 or len(q.gains) == 0 or not q.gains.any():
            continue
        scores = q.contrib @ weights.T + np.outer(q.imputed[src], weights[:, 1])
        top = np.argsort(-scores, axis=0, kind="stable")[:10]
        dcg = (q.gains[top] * _DISCOUNT[: len(top), None]).sum(axis=0)
        out[i] = dcg / q.idcg
    return out


def indistinguishable(per_query: np.ndarray) -> np.ndarray:
    """Columns whose mean is within one standard error (of the paired per-query difference)
    of the best column's, or within TIE: what these queries cannot tell apart from the best
    (the one-standard-error rule)."""
    means = per_query.mean(axis=0)
    best = int(means.argmax())
    n = per_query.shape[0]
    diff = per_query[:, [best]] - per_query
    se = diff.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(means), np.inf)
    return np.flatnonzero(means >= means[best] - np.maximum(se, TIE))


def fit_profile(
    steps: Steps, qrels: Qrels, k: int, prior: Profile, source: str
) -> tuple[Profile, dict[str, float]]:
    """One knot per coverage in `steps`; returns the profile and its nDCG@10 on the fitting
    queries (a training figure, never to be reported as quality)."""
    w = grid()
    feats = {pct: _features(cands, qrels, k) for pct, (_, cands) in steps.items()}
    fits: list[tuple[Profile, dict[str, float], np.ndarray]] = []
    for src in IMPUTE_FROM:
        knots, fitted, picked = [], {}, []
        for pct in sorted(steps):
            coverage = pct / 100  # the knot sits where the step aimed (counted: within a doc)
            per_query = ndcg_by_weights(feats[pct], w, src)
            want = np.array([weights_at(prior, coverage)[n] for n in LISTS])
            want = want / want.max() if want.max() > 0 else want
            close = indistinguishable(per_query)
            pick = close[np.argmin(np.abs(w[close] - want).sum(axis=1))]
            knots.append((coverage, dict(zip(LISTS, map(float, w[pick]), strict=True))))
            fitted[str(pct)] = round(float(per_query[:, pick].mean()), 4)
            picked.append(per_query[:, pick])
        fits.append((Profile(tuple(knots), src, source), fitted, np.mean(picked, axis=0)))
    # The imputation source, by the same rule: the rule's own unless another clearly wins.
    close = indistinguishable(np.column_stack([f[2] for f in fits]))
    sources = [IMPUTE_FROM[i] for i in close]
    chosen = tuple(prior.impute_from) if tuple(prior.impute_from) in sources else sources[0]
    profile, fitted, _ = fits[IMPUTE_FROM.index(chosen)]
    return profile, fitted
