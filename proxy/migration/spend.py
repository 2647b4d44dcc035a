"""What the migration has cost in API tokens, and the spend cap.

Tokens are those the provider billed (its `usage`, or the model's tokenizer when it reports
none), counted per re-embed request and kept in the migration state (durable: a restart goes
on from the same sum; atomic counters: a fleet's processes all count, each request once),
keyed by the migration they belong to, so a new migration starts from zero.
`plan.price_per_million_tokens` turns them into money; when that reaches the cap
(`migration.max_spend`, or the value set at run time with `crossfade backfill limit
--max-spend`) the worker stops re-embedding until the cap is raised."""

from __future__ import annotations

from typing import Any

from proxy.config import Settings
from proxy.state import StateStore

KEY = "spend"


def _key(state: StateStore) -> str:
    """The counters of the migration running now (a new one starts from zero)."""
    migration = (state.get("migration") or {}).get("started_at")
    return f"{KEY}:{migration}"


def add_spend(state: StateStore, tokens: int, requests: int = 1) -> None:
    """Atomic in the state store: replicas and workers billing at once all count."""
    state.add_counts(_key(state), {"tokens": tokens, "requests": requests})


def spend_status(state: StateStore, settings: Settings, max_spend: float) -> dict[str, Any]:
    """Tokens, money, the cap (None = none) and whether it is reached. `max_spend` comes
    from the control state (the config's value unless changed at run time)."""
    spent = state.counts(_key(state))
    tokens = int(spent.get("tokens", 0))
    price = settings.plan.price_per_million_tokens
    cost = tokens / 1e6 * price
    return {
        "tokens": tokens,
        "requests": int(spent.get("requests", 0)),
        "price_per_million_tokens": price,
        "cost": round(cost, 6),
        "max_spend": max_spend or None,
        "capped": bool(max_spend) and cost >= max_spend,
    }
