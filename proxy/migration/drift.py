"""Drift: which models' vectors each index holds. A serving index that is not 100% its bound
model's fingerprint is the bilingual failure in the making, and raises an alarm, including
for vectors written into the store behind the proxy's back (by fingerprint, or with none)."""

from __future__ import annotations

from typing import Any

from proxy.config import Mode
from proxy.runtime import SIDES, Runtime
from proxy.search import MODE_LISTS


def serving_sides(modes: set[Mode]) -> set[str]:
    lists = {name for m in modes for name in MODE_LISTS[m]}
    return {"old"} if lists == {"old"} else ({"new"} | ({"old"} if "old" in lists else set()))


def drift_report(rt: Runtime, modes: set[Mode]) -> dict[str, Any]:
    serving = serving_sides(modes)
    out: dict[str, Any] = {"alarm": False, "indexes": {}}
    for side in SIDES:
        store = rt.store(side)
        info = store.info()
        if info is None:
            continue
        counts = store.fingerprints()
        foreign = {fp: n for fp, n in counts.items() if fp != info.fingerprint}
        alarm = side in serving and bool(foreign)
        out["indexes"][side] = {
            "serving": side in serving,
            "bound_fingerprint": info.fingerprint,
            "fingerprints": counts,
            "foreign": foreign,
            "alarm": alarm,
        }
        out["alarm"] = out["alarm"] or alarm
    return out
