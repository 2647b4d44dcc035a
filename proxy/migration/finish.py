"""`crossfade migrate finish`: end a migration after its cutover.

Dual writes stop (the old index is no longer live, proxy/writes.py), the old index or the
old vector is retired (dropped, or kept and said so), rollback is no longer possible, and the
audit log records it. What is left is a state the next migration starts from: the former new
index becomes `indexes.old` (and its model `models.old`) in the config, and `migrate start`
to a third model works from there.

Finishing waits `migration.finish_guard_s` after the last cutover, the time in which a
rollback is still the cheap way back, unless told `--now`.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from proxy.config import Mode
from proxy.errors import Conflict
from proxy.migration.cutover import AuditLog, describe
from proxy.routing import Routing, routing_dict
from proxy.runtime import Runtime


class FinishRefused(Conflict, RuntimeError):
    """Not yet (the guard period) or not from here (no cutover): nothing was changed."""


def last_cutover_at(audit: AuditLog) -> float | None:
    # The whole log: a cutover followed by many other entries still starts the guard period.
    for e in reversed(audit.tail(None)):
        if str(e.get("action", "")).startswith("cutover") and e.get("to"):
            return datetime.fromisoformat(e["at"]).timestamp()
    return None


def why_not_finish(
    routing: Routing, audit: AuditLog, guard_s: float, now: bool, migration: Any
) -> str | None:
    """Why a finish must wait or can't happen (None: it may). Reads only."""
    if not migration or migration.get("state") == "finished":
        return "no migration to finish (start one with `crossfade migrate start`)"
    if routing.mode is not Mode.NEW or (routing.split_mode and routing.split_percent > 0):
        return f"finish needs a cutover first: serving {describe(routing)}"
    at = last_cutover_at(audit)
    if not now and at is not None and time.time() - at < guard_s:
        left = guard_s - (time.time() - at)
        return (
            f"guard period: the cutover was {time.time() - at:.0f}s ago, finish in {left:.0f}s "
            "(rollback stays possible until then), or give --now"
        )
    return None


def retired(rt: Runtime) -> bool:
    """Whether the old index is retired (a finished migration): no longer written or read."""
    return bool(rt.state.get("retired"))


def finish_migration(
    rt: Runtime, routing: Routing, audit: AuditLog, actor: str, now: bool, drop: bool
) -> dict[str, Any]:
    """Blocking; the caller holds the control lock and clears its rollback target."""
    migration = rt.state.get("migration")
    why = why_not_finish(routing, audit, rt.settings.migration.finish_guard_s, now, migration)
    if why:
        raise FinishRefused(why)
    with rt.writing():  # no dual write in flight while the old index is retired
        old = rt.store("old")
        where = old.location
        rt.state.set("retired", True)
        if drop:
            old.drop()
    retired_as = "dropped" if drop else "kept (no longer written or read)"
    new = rt.store("new")
    migration = {
        **migration,
        "state": "finished",
        "finished_at": datetime.now().astimezone().isoformat(timespec="milliseconds"),
        "old_index": {"where": where, "retired": retired_as},
        "new_index": new.location,
    }
    rt.state.set("migration", migration)
    rt.state.set("paused", False)
    return audit.append(
        {
            "action": "migrate finish" + (" (--now)" if now else ""),
            "actor": actor,
            "from": routing_dict(routing),
            "to": routing_dict(routing),
            "old_index": migration["old_index"],
            "new_index": migration["new_index"],
            "dual_writes": "stopped",
            "rollback": "no longer possible",
            "next": "set models.old and indexes.old to what now serves, then "
            "`crossfade migrate start` to the next model",
        }
    )
