"""The query adapter: old-model query vectors served during a migration. Pure: numpy, no I/O.

An app that embeds its queries itself (LangChain's and LlamaIndex's Qdrant stores with a local
model) sends old-model vectors; crossfade never sees the text. Every migrated document gives a
pair (its old vector, its new vector), and from those pairs a linear map old -> new is fitted
(ridge regression, refitted as coverage grows). A query vector is then searched twice: as it
is in the old index, and mapped into the new one; the two lists are fused by their scores.

Why scores, not ranks: measured on SciFact and ArguAna (docs/measurements/vector-clients.md),
the mapped query alone loses to the old index until high coverage on one set and at every
coverage on the other, and weighted RRF of the two gains little or loses; the sum of each
list's z-scores (per query, over the hits it returned: CombSUM after z-normalisation) gained at
every coverage on both, with equal weights, so nothing here is tuned on queries:

    score(d) = z_old(d) + z_new(d)

z_old(d) is d's standardised cosine in the old list (the list's lowest if d is not in it);
z_new(d) likewise in the mapped list for a migrated document, and for a document without a new
vector its own z_old (imputed, as the fusion imputes a missing new rank: an unmigrated document
must not lose for lacking a vector). With no usable map the new list is empty and the order is
the old index's own.

Fidelity (is the map worth serving?) is measured on held-out pairs, never on queries: for each
held-out document, its mapped old vector's 10 nearest held-out new vectors are compared with the
new model's own 10 nearest neighbours of that document, and so are the old model's own 10
nearest (old space). fidelity = mean overlap@10 of the map - mean overlap@10 of the old model:
how much better the map sees the new model's neighbourhoods than the old model itself does.
Zero is break-even; `adapter_min_fidelity` asks for a margin over it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from proxy.clock import now_iso
from proxy.config import VectorClientsConfig
from proxy.fusion import Fused

# Ridge strength, relative to the mean eigenvalue of X^T X (scale-free: the same for any number
# of pairs or any vector norm). Measured: as good from 0.001 to 0.03 of it, worse from 0.1 on.
RIDGE = 0.01
HOLDOUT = 0.2  # share of the pairs held out to measure fidelity ...
MAX_HELD_OUT = 1000  # ... at most this many (the measure compares every pair of them)
NEIGHBOURS = 10
MIN_FIT_PAIRS = 2 * NEIGHBOURS + 2  # fewer cannot be split into a fit and a neighbourhood


@dataclass(frozen=True)
class QueryMap:
    """A fitted old -> new map: new ~ normalise(old @ matrix)."""

    old_fingerprint: str
    new_fingerprint: str
    matrix: np.ndarray  # (old dim, new dim), float32
    pairs: int  # pairs the final map was fitted on (all of them, up to max_pairs)
    fidelity: float  # agreement - old_agreement, on held-out pairs
    agreement: float  # mean overlap@10 of the mapped neighbourhoods with the new model's
    old_agreement: float  # the same for the old model's own neighbourhoods
    held_out: int  # pairs the fidelity was measured on (not fitted by the map measured)
    fitted_at: str

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Map old-model vectors (one, or a batch of rows) into the new space, unit length."""
        x = np.asarray(vectors, dtype=np.float32)
        return unit(x @ self.matrix)

    def to_json(self) -> dict[str, Any]:
        m = np.ascontiguousarray(self.matrix, dtype="<f4")
        return {
            "old_fingerprint": self.old_fingerprint,
            "new_fingerprint": self.new_fingerprint,
            "shape": list(m.shape),
            "matrix": base64.b64encode(m.tobytes()).decode("ascii"),
            "pairs": self.pairs,
            "fidelity": self.fidelity,
            "agreement": self.agreement,
            "old_agreement": self.old_agreement,
            "held_out": self.held_out,
            "fitted_at": self.fitted_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueryMap:
        rows, cols = (int(x) for x in data["shape"])
        raw = base64.b64decode(data["matrix"], validate=True)
        if len(raw) != rows * cols * 4:
            raise ValueError(f"query map: {len(raw)} bytes for a {rows}x{cols} float32 matrix")
        matrix = np.frombuffer(raw, dtype="<f4").reshape(rows, cols).astype(np.float32)
        return cls(
            old_fingerprint=str(data["old_fingerprint"]),
            new_fingerprint=str(data["new_fingerprint"]),
            matrix=matrix,
            pairs=int(data["pairs"]),
            fidelity=float(data["fidelity"]),
            agreement=float(data["agreement"]),
            old_agreement=float(data["old_agreement"]),
            held_out=int(data["held_out"]),
            fitted_at=str(data["fitted_at"]),
        )

    def summary(self) -> dict[str, Any]:
        """What status and the eval show (no matrix)."""
        out = self.to_json()
        for key in ("matrix", "shape"):
            out.pop(key)
        return out


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def ridge_map(old: np.ndarray, new: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """argmin_W |old W - new|^2 + lam |W|^2, lam = ridge x the mean eigenvalue of old^T old."""
    x = np.asarray(old, dtype=np.float64)
    y = np.asarray(new, dtype=np.float64)
    gram = x.T @ x
    lam = ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), x.T @ y).astype(np.float32)


def _top(sim: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns (as a set: order does not matter), the diagonal excluded."""
    sim = sim.copy()
    np.fill_diagonal(sim, -np.inf)
    return np.argpartition(-sim, k - 1, axis=1)[:, :k]


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    k = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def neighbour_agreement(
    matrix: np.ndarray, old: np.ndarray, new: np.ndarray, k: int = NEIGHBOURS
) -> tuple[float, float]:
    """(map, old model): mean overlap@k of each document's neighbours among these pairs with
    the new model's own neighbours of it. Map: its mapped old vector against the new vectors;
    old model: its old vector against the old vectors."""
    o, n = unit(np.asarray(old, dtype=np.float32)), unit(np.asarray(new, dtype=np.float32))
    k = min(k, len(o) - 1)
    truth = _top(n @ n.T, k)
    mapped = _top(unit(o @ matrix) @ n.T, k)
    own = _top(o @ o.T, k)
    return _overlap(mapped, truth), _overlap(own, truth)


def fit_query_map(
    old: np.ndarray,
    new: np.ndarray,
    old_fp: str,
    new_fp: str,
    *,
    max_pairs: int = 50_000,
    seed: int = 0,
    ridge: float = RIDGE,
    holdout: float = HOLDOUT,
    max_held_out: int = MAX_HELD_OUT,
    fitted_at: str | None = None,
) -> QueryMap:
    """Fit old -> new on the rows of `old`, `new` (the same documents, in the same order).

    Up to `max_pairs` pairs are used (a seeded sample). A seeded share `holdout` of them (at
    most `max_held_out`) is held out: a map fitted on the rest is scored on them (fidelity);
    the map returned is then refitted on all the pairs used."""
    old = np.asarray(old, dtype=np.float32)
    new = np.asarray(new, dtype=np.float32)
    if old.ndim != 2 or new.ndim != 2 or len(old) != len(new):
        raise ValueError(f"pairs: old {old.shape} and new {new.shape} must be row-aligned")
    if len(old) < MIN_FIT_PAIRS:
        raise ValueError(f"{len(old)} pairs: a query map needs at least {MIN_FIT_PAIRS}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(old))[:max_pairs]
    held = min(max_held_out, max(NEIGHBOURS + 1, round(holdout * len(order))))
    test, train = order[:held], order[held:]
    probe = ridge_map(old[train], new[train], ridge)
    agreement, old_agreement = neighbour_agreement(probe, old[test], new[test])
    return QueryMap(
        old_fingerprint=old_fp,
        new_fingerprint=new_fp,
        matrix=ridge_map(old[order], new[order], ridge),
        pairs=len(order),
        fidelity=round(agreement - old_agreement, 6),
        agreement=round(agreement, 6),
        old_agreement=round(old_agreement, 6),
        held_out=int(held),
        fitted_at=fitted_at or now_iso(),
    )


def min_pairs(cfg: VectorClientsConfig, dim: int) -> int:
    """Fewest pairs a map is served from: `adapter_min_pairs`, by default twice the old
    model's dimension (a d x d map from fewer pairs is barely constrained)."""
    return cfg.adapter_min_pairs if cfg.adapter_min_pairs is not None else 2 * dim


def usable(
    qmap: QueryMap | None,
    cfg: VectorClientsConfig,
    old_fp: str | None = None,
    new_fp: str | None = None,
) -> bool:
    """Whether old-model query vectors go through `qmap` (else: the old index alone)."""
    if cfg.adapter != "auto" or qmap is None:
        return False
    if old_fp is not None and qmap.old_fingerprint != old_fp:
        return False
    if new_fp is not None and qmap.new_fingerprint != new_fp:
        return False
    if not math.isfinite(qmap.fidelity):
        return False
    return qmap.pairs >= min_pairs(cfg, qmap.matrix.shape[0]) and (
        qmap.fidelity >= cfg.adapter_min_fidelity
    )


def needs_refit(qmap: QueryMap | None, pairs: int, cfg: VectorClientsConfig) -> bool:
    """Refit once the migrated documents have grown by `adapter_refit_growth` since the map
    was fitted (a map fitted on max_pairs already is kept), or when there is none."""
    if cfg.adapter != "auto" or pairs < MIN_FIT_PAIRS:
        return False
    if qmap is None:
        return True
    if qmap.pairs >= cfg.adapter_max_pairs:
        return False
    return pairs >= qmap.pairs * (1.0 + cfg.adapter_refit_growth)


def _z(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if len(s) < 2:
        return np.zeros(len(s))
    sd = float(s.std())
    return (s - s.mean()) / sd if sd > 1e-12 else np.zeros(len(s))


def fuse_vector(
    old: Sequence[tuple[str, float]],
    new: Sequence[tuple[str, float]],
    migrated: Collection[str],
    limit: int,
) -> list[Fused]:
    """Fuse the old index's hits of an old-model query vector with the new index's hits of
    its mapped vector, both as (doc id, cosine) best first: z_old + z_new (module docstring).
    `migrated` = documents holding a new vector (every hit of `new`, and those of `old` the
    new index holds). With `new` empty (no usable map) this is the old list's own order.
    Ties break on the best single rank, then doc id."""
    oz = dict(zip((d for d, _ in old), _z([s for _, s in old]), strict=True))
    nz = dict(zip((d for d, _ in new), _z([s for _, s in new]), strict=True))
    orank = {d: r for r, (d, _) in enumerate(old, start=1)}
    nrank = {d: r for r, (d, _) in enumerate(new, start=1)}
    omin = min(oz.values(), default=0.0)
    nmin = min(nz.values(), default=0.0)
    scored: list[tuple[float, int, str, bool, bool]] = []
    for doc in {**orank, **nrank}:
        so = float(oz.get(doc, omin))
        has_new = doc in nz or doc in migrated
        # No new list at all (no usable map): nothing to fuse, the old order stands.
        sn = float(nz.get(doc, nmin)) if has_new and nz else so
        best = min(orank.get(doc, math.inf), nrank.get(doc, math.inf))
        scored.append((-(so + sn), int(best), doc, has_new, bool(nz) and not has_new))
    scored.sort()
    return [
        Fused(
            doc_id=doc,
            score=-neg,
            ranks={"old": orank.get(doc), "new": nrank.get(doc)},
            migrated=has_new,
            imputed=imputed,
        )
        for neg, _, doc, has_new, imputed in scored[:limit]
    ]
