"""The migration's old -> new query map (proxy/adapter.py) for apps that send old-model
vectors: fitted on the (old vector, new vector) pairs of migrated documents, read from the two
indexes; kept in the migration state, bound to both fingerprints; refitted as coverage grows.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from proxy.adapter import MIN_FIT_PAIRS, QueryMap, fit_query_map, min_pairs, usable
from proxy.clock import now_iso
from proxy.runtime import Runtime

log = logging.getLogger("crossfade")
KEY = "query_map"


def load_map(rt: Runtime) -> QueryMap | None:
    """The stored map, if it was fitted for the models configured now (the only check of its
    fingerprints: a map fitted here is fitted for them, so serving asks no more)."""
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
    stored) while too few documents have both vectors to fit one."""
    cfg = rt.settings.vector_clients
    new = rt.store("new").dense_sample(cfg.adapter_max_pairs)
    old = rt.store("old").dense_vectors(list(new))
    ids = [d for d in new if d in old]
    if len(ids) < MIN_FIT_PAIRS:
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
        "used" if usable(m, cfg) else "not used yet (pairs or fidelity)",
    )
    return m


def map_status(m: QueryMap | None, rt: Runtime) -> dict[str, Any]:
    """The map as status shows it: fitted on how many pairs, its fidelity, whether it serves."""
    cfg = rt.settings.vector_clients
    need = {
        "min_pairs": min_pairs(cfg, rt.model("old").fingerprint.dim),
        "min_fidelity": cfg.adapter_min_fidelity,
    }
    if m is None:
        return {"fitted": False, "used": False, **need}
    return {"fitted": True, "used": usable(m, cfg), **m.summary(), **need}
