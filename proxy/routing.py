"""Routing: which mode serves a request. Pure functions over an immutable snapshot.

A request's mode is decided once, from one snapshot, so a response comes wholly from one mode
even while a cutover swaps the snapshot under concurrent requests.

    per-request override  >  traffic split (sticky by client key)  >  base mode

The split sends `split_percent` of client keys to `split_mode`; the same key always lands in
the same bucket (sha256 of the key), so a user does not flip between modes between requests.
A request without a key (`routing.without_key`) is either bucketed at random, request by
request ("random": the split's share of keyless traffic, but one client may see both modes),
or always served by the base mode ("base": keyless clients never see the split mode).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from proxy.config import Mode

BUCKETS = 10_000


@dataclass(frozen=True)
class Routing:
    mode: Mode
    split_mode: Mode | None = None
    split_percent: float = 0.0  # 0..100
    generation: int = 0  # bumped by every switch


def parse_routing(d: dict[str, Any]) -> Routing:
    return Routing(
        mode=Mode(d["mode"]),
        split_mode=Mode(d["split_mode"]) if d.get("split_mode") else None,
        split_percent=float(d.get("split_percent", 0.0)),
        generation=int(d.get("generation", 0)),
    )


def routing_dict(r: Routing) -> dict[str, Any]:
    return {
        "mode": r.mode.value,
        "split_mode": r.split_mode.value if r.split_mode else None,
        "split_percent": r.split_percent,
        "generation": r.generation,
    }


def bucket(key: str) -> int:
    """Stable bucket in [0, BUCKETS) for a client key."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % BUCKETS


def route(
    routing: Routing,
    key: str | None = None,
    override: Mode | None = None,
    without_key: str = "random",
) -> Mode:
    if override is not None:
        return override
    if routing.split_mode is None or routing.split_percent <= 0:
        return routing.mode
    if not key and without_key == "base":
        return routing.mode
    b = bucket(key) if key else random.randrange(BUCKETS)
    return routing.split_mode if b < routing.split_percent / 100 * BUCKETS else routing.mode


def overlap_at_k(a: list[str], b: list[str], k: int = 10) -> float:
    """|top-k(a) & top-k(b)| / k."""
    if k <= 0:
        return 0.0
    return len(set(a[:k]) & set(b[:k])) / k


def rank_biased_overlap(a: list[str], b: list[str], p: float = 0.9) -> float:
    """Rank-biased overlap (Webber et al. 2010), extrapolated form for finite lists:
    1 for identical rankings, 0 for disjoint ones, top ranks weighted most."""
    depth = min(len(a), len(b))
    if depth == 0:
        return 1.0 if len(a) == len(b) else 0.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    agree = 0
    total = 0.0
    for d in range(1, depth + 1):
        x, y = a[d - 1], b[d - 1]
        if x == y:
            agree += 1
        else:
            agree += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += (agree / d) * p**d
    return (agree / depth) * p**depth + (1 - p) / p * total
