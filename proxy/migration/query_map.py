"""The migration's old -> new query map (proxy/adapter.py) for apps that send old-model
vectors: fitted on the (old vector, new vector) pairs of migrated documents, read from the two
indexes; kept in the migration state, bound to both fingerprints; refitted as coverage grows.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from proxy.adapter import QueryMap, fit_query_map, usable
from proxy.clock import now_iso
from proxy.runtime import Runtime

log = logging.getLogger("crossfade")
KEY = "query_map"


def load_map(rt: Runtime) -> QueryMap | None:
    """The stored map, if it was fitted for the models configured now."""
    raw = rt.state.get(KEY)
    if not raw:
        return None
    m = QueryMap.from_json(raw)
    fps = rt.fingerprints()
    if (m.old_fingerprint, m.new_fingerprint) != (fps["old"], fps["new"]):
        return None
    return m


def fit_map(rt: Runtime) -> QueryMap | None:
    """Fit on up to `adapter_max_pairs` migrated documents and store the map; None (nothing
    stored) while fewer than `adapter_min_pairs` documents have both vectors."""
    cfg = rt.settings.vector_clients
    new = rt.store("new").dense_sample(cfg.adapter_max_pairs)
    old = rt.store("old").dense_vectors(list(new))
    ids = [d for d in new if d in old]
    if len(ids) < cfg.adapter_min_pairs:
        return None
    fps = rt.fingerprints()
    m = fit_query_map(
        np.stack([old[d] for d in ids]),
        np.stack([new[d] for d in ids]),
        fps["old"],
        fps["new"],
        fitted_at=now_iso(),
    )
    rt.state.set(KEY, m.to_json())
    log.info(
        "query map fitted on %d pairs, fidelity %.3f (%s)",
        m.pairs,
        m.fidelity,
        "used" if usable(m, cfg) else "not used: under vector_clients.adapter_min_fidelity",
    )
    return m


def due(m: QueryMap | None, migrated: int, min_pairs: int, max_pairs: int, growth: float) -> bool:
    """Whether to refit: none yet and enough pairs, or the migrated count grew by `growth`
    (a share) since the pairs it was fitted on, until it was fitted on `max_pairs`."""
    if migrated < min_pairs:
        return False
    if m is None:
        return True
    return m.pairs < max_pairs and migrated >= m.pairs * (1 + growth)


def map_status(m: QueryMap | None, rt: Runtime) -> dict[str, Any]:
    cfg = rt.settings.vector_clients
    if m is None:
        return {"fitted": False, "used": False, "min_pairs": cfg.adapter_min_pairs}
    return {
        "fitted": True,
        "used": usable(m, cfg),
        "pairs": m.pairs,
        "fidelity": round(m.fidelity, 4),
        "min_fidelity": cfg.adapter_min_fidelity,
        "fitted_at": m.fitted_at,
    }
