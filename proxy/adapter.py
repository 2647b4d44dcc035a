"""(placeholder until the adapter branch lands) The old -> new query map."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

from proxy.config import FusionConfig, VectorClientsConfig
from proxy.fusion import FusionParams


@dataclass(frozen=True)
class QueryMap:
    old_fingerprint: str
    new_fingerprint: str
    matrix: np.ndarray
    pairs: int
    fidelity: float
    fitted_at: str

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        out = np.asarray(vectors, dtype=np.float32) @ self.matrix
        n = np.linalg.norm(out, axis=-1, keepdims=True)
        return out / np.where(n == 0, 1, n)

    def to_json(self) -> str:
        m = np.ascontiguousarray(self.matrix, dtype=np.float32)
        return json.dumps(
            {
                "old_fingerprint": self.old_fingerprint,
                "new_fingerprint": self.new_fingerprint,
                "shape": list(m.shape),
                "matrix": base64.b64encode(m.tobytes()).decode(),
                "pairs": self.pairs,
                "fidelity": self.fidelity,
                "fitted_at": self.fitted_at,
            }
        )

    @classmethod
    def from_json(cls, s: str) -> QueryMap:
        d = json.loads(s)
        m = np.frombuffer(base64.b64decode(d["matrix"]), dtype=np.float32).reshape(d["shape"])
        return cls(
            d["old_fingerprint"], d["new_fingerprint"], m, d["pairs"], d["fidelity"], d["fitted_at"]
        )


def fit_query_map(
    old: np.ndarray, new: np.ndarray, old_fp: str, new_fp: str, fitted_at: str = ""
) -> QueryMap:
    x, y = np.asarray(old, np.float64), np.asarray(new, np.float64)
    w = np.linalg.solve(x.T @ x + 1.0 * np.eye(x.shape[1]), x.T @ y)
    return QueryMap(old_fp, new_fp, w.astype(np.float32), len(x), 1.0, fitted_at)


def usable(m: QueryMap | None, cfg: VectorClientsConfig) -> bool:
    return m is not None and cfg.adapter == "auto"


def vector_params(fusion: FusionConfig, coverage: float) -> FusionParams:
    return FusionParams(
        k=fusion.k,
        weights={"old": 1.0, "new": 0.5, "bm25": 0.0},
        coverage=coverage,
        lists=("old", "new"),
        impute_from=("old",),
    )
