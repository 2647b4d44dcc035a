"""The control plane of a running proxy: the serving pointer, switches (mode, split, cutover,
rollback) with their audit trail, and the shadow comparison's running figures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from proxy.beir import Beir
from proxy.config import CutoverConfig, Mode
from proxy.migration.cutover import (
    AuditLog,
    evaluate_gate,
    load_routing,
    new_too_early,
    nothing_to_roll_back,
    save_routing,
    why_no_cutover,
)
from proxy.migration.finish import FinishRefused, finish_migration
from proxy.migration.worker import control_state, set_control
from proxy.routing import Routing, overlap_at_k, rank_biased_overlap, route, routing_dict
from proxy.runtime import Runtime
from proxy.search import Searcher
from proxy.state import CONTROL, StateStore, StateUnavailable

log = logging.getLogger("crossfade")


@asynccontextmanager
async def held(state: StateStore, section: str) -> AsyncIterator[None]:
    """`state.exclusive(section)` around async work: taken and given back off the event loop
    (with a shared state it waits on a PostgreSQL advisory lock)."""
    cm = state.exclusive(section)
    await asyncio.to_thread(cm.__enter__)
    try:
        yield
    finally:
        await asyncio.to_thread(cm.__exit__, None, None, None)


@dataclass
class ShadowStats:
    compared: int = 0
    overlap_sum: float = 0.0
    rbo_sum: float = 0.0
    last_overlap: float | None = None
    last_rbo: float | None = None

    def record(self, served: list[str], shadow: list[str], k: int = 10) -> tuple[float, float]:
        o, r = overlap_at_k(served, shadow, k), rank_biased_overlap(served[:k], shadow[:k])
        self.compared += 1
        self.overlap_sum += o
        self.rbo_sum += r
        self.last_overlap, self.last_rbo = o, r
        return o, r

    def summary(self) -> dict[str, Any]:
        n = self.compared
        return {
            "compared": n,
            "mean_overlap@10": round(self.overlap_sum / n, 4) if n else None,
            "mean_rbo": round(self.rbo_sum / n, 4) if n else None,
        }


class ControlPlane:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.routing, self.rollback_to = load_routing(rt.state, rt.settings)
        self.audit = AuditLog(rt.state)
        self.audit.reconcile(self.routing)
        self.shadow = ShadowStats()
        self.last_gate: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        # Why the shared state can't be read now (None: it can): the replica keeps serving the
        # generation it knows, marked degraded, and refuses control changes.
        self.state_error: str | None = None

    def refresh(self) -> bool:
        """Take the pointer another process of the fleet switched (blocking); whether it
        changed. Raises StateUnavailable when the state store can't be read."""
        pointer = self.rt.state.pointer()
        if pointer is None or pointer.routing == self.routing:
            return False
        if pointer.routing.generation < self.routing.generation:
            return False  # never back to an older view
        before = self.routing
        self.rollback_to, self.routing = pointer.rollback_to, pointer.routing
        log.info("serving pointer switched elsewhere in the fleet: %s", routing_dict(self.routing))
        return before != self.routing

    async def follow(self) -> None:
        """One read of the shared pointer (run every `state.poll_s`): on failure, mark the
        replica stale rather than stop serving."""
        try:
            await asyncio.to_thread(self.refresh)
        except StateUnavailable as e:
            if self.state_error is None:
                log.warning(
                    "state store unreachable, serving generation %d: %s", self.routing.generation, e
                )
            self.state_error = str(e)
            return
        if self.state_error is not None:
            log.warning("state store reachable again")
        self.state_error = None

    def stale(self) -> str | None:
        """Why an answer must be marked degraded (the fleet's state unreachable), or None."""
        if self.state_error is None:
            return None
        return f"state store unreachable: serving generation {self.routing.generation}"

    @asynccontextmanager
    async def _changing(self) -> AsyncIterator[None]:
        """A control change: one at a time in this process (`_lock`) and in the fleet
        (CONTROL), starting from the pointer as the state store has it now (a switch made
        through another replica a moment ago is the `before` of this one). The state store
        unreachable: StateUnavailable, nothing changed."""
        async with self._lock, held(self.rt.state, CONTROL):
            await asyncio.to_thread(self.refresh)
            yield

    def route(self, key: str | None, override: Mode | None) -> tuple[Mode, int]:
        r = self.routing  # one read: the request is routed wholly by this snapshot
        return route(r, key, override, self.settings.routing.without_key), r.generation

    def modes_in_use(self) -> set[Mode]:
        r = self.routing
        return {r.mode} | ({r.split_mode} if r.split_mode and r.split_percent > 0 else set())

    async def switch(
        self,
        change: Callable[[Routing], Routing],
        action: str,
        actor: str,
        gate: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A mode or split change, applied to the pointer as it is now (after any switch made
        elsewhere in the fleet: a stale view never undoes it); what a rollback would restore
        stays as it was."""
        async with self._changing():
            return await self._switch(change(self.routing), action, actor, gate, self.rollback_to)

    async def _switch(
        self,
        target: Routing,
        action: str,
        actor: str,
        gate: dict[str, Any] | None,
        rollback_to: Routing | None,
    ) -> dict[str, Any]:
        """Move the Qdrant alias (if any), persist the pointer (atomic rename), then swap it in
        memory (one assignment). The alias goes first: it is the step that can fail on a
        network, and failing there changes nothing; if the pointer can't be saved after it,
        the alias is moved back. Callers hold `_changing()`: control operations run one at a
        time, so a rollback asked for while a cutover is being evaluated waits for it and then
        undoes it."""
        before = self.routing
        new = replace(target, generation=before.generation + 1)
        await asyncio.to_thread(self._mirror_alias, new)
        try:
            await asyncio.to_thread(save_routing, self.rt.state, new, rollback_to)
        except BaseException:
            await asyncio.to_thread(self._mirror_alias, before)
            raise
        self.rollback_to, self.routing = rollback_to, new
        return await asyncio.to_thread(
            self.audit.append,
            {
                "action": action,
                "actor": actor,
                "from": routing_dict(before),
                "to": routing_dict(new),
                "gate": gate,
            },
        )

    def steer_backfill(
        self,
        actor: str,
        action: str | None = None,
        backfill: bool | None = None,
        until: float | None = None,
        max_spend: float | None = None,
    ) -> dict[str, Any]:
        """Pause/resume the re-embed worker, switch or limit the backfill, set the spend cap
        (persisted, so a restart honours it), and record the change in the audit log like any
        switch (blocking)."""
        cfg = self.settings.migration
        before = control_state(self.rt.state, cfg)
        set_control(self.rt.state, action, backfill, until, max_spend=max_spend)
        after = control_state(self.rt.state, cfg)
        self.audit.append(
            {
                "action": backfill_action(action, backfill, until, max_spend),
                "actor": actor,
                "before": before,
                "after": after,
            }
        )
        return after

    def _mirror_alias(self, routing: Routing) -> None:
        """Qdrant server: point `<new collection>_serving` at the collection now serving."""
        new = self.rt.store("new")
        old = self.rt.store("old")
        if not new.aliases or new.info() is None:
            return
        if new.in_place:  # one collection, no alias to move
            return
        target = new if routing.mode is Mode.NEW else old
        new.set_alias(f"{new.collection}_serving", target.collection)

    async def cutover(
        self, searcher: Searcher, data: Beir | None, force: bool, actor: str
    ) -> tuple[bool, dict[str, Any]]:
        if data is None and not force:
            return False, {"ok": False, "refused_because": ["no labelled queries to gate on"]}
        async with self._changing():
            done = why_no_cutover(self.routing)  # cut over elsewhere in the fleet meanwhile
            if done:
                return False, {"ok": False, "refused_because": [done]}
            stuck = (await asyncio.to_thread(self.rt.state.unembeddable))["count"]
            gate = (
                await evaluate_gate(searcher, data, self.settings.cutover, stuck) if data else None
            )
            self.last_gate = gate
            if gate is not None and not gate["ok"] and not force:
                await asyncio.to_thread(
                    self.audit.append, {"action": "cutover refused", "actor": actor, "gate": gate}
                )
                return False, gate
            action = "cutover (forced)" if force else "cutover"
            # What served before this cutover is what a rollback restores.
            entry = await self._switch(Routing(mode=Mode.NEW), action, actor, gate, self.routing)
        return True, {**(gate or {"ok": None}), "forced": force, "audit": entry}

    async def finish(self, actor: str, now: bool, drop: bool) -> tuple[bool, dict[str, Any]]:
        """End the migration (proxy/migration/finish.py); no rollback after it."""
        async with self._changing():
            try:
                entry = await asyncio.to_thread(
                    finish_migration, self.rt, self.routing, self.audit, actor, now, drop
                )
            except FinishRefused as e:
                return False, {"error": str(e)}
            self.rollback_to = None
            await asyncio.to_thread(save_routing, self.rt.state, self.routing, None)
            return True, entry

    async def rollback(self, actor: str) -> tuple[bool, dict[str, Any]]:
        """Back to the routing that served before the last cutover; (False, why) if there is
        no cutover to undo (never a switch forward)."""
        async with self._changing():
            if self.rollback_to is None:
                return False, {"error": nothing_to_roll_back(self.routing)}
            return True, await self._switch(self.rollback_to, "rollback", actor, None, None)


def backfill_action(
    action: str | None,
    backfill: bool | None,
    until: float | None,
    max_spend: float | None = None,
) -> str:
    """The audit log's name for a backfill control change, e.g. "backfill pause"."""
    parts = [action] if action else []
    if backfill is not None:
        parts.append("on" if backfill else "off")
    if until is not None:
        parts.append(f"until {until:g}%")
    if max_spend is not None:
        parts.append(f"max spend {max_spend:g}")
    return " ".join(["backfill", *parts]) if parts else "backfill (no change)"


def available_actions(
    routing: Routing,
    rollback_to: Routing | None,
    coverage: float | None,
    gate: CutoverConfig,
    paused: bool,
) -> dict[str, str | None]:
    """What an operator can do now: each action with why it can't (None = it can). The
    dashboard enables its buttons from this; the API refuses the same cases. Pure."""
    done = why_no_cutover(routing)
    early = new_too_early(coverage, gate) if coverage is not None else "coverage unknown"
    return {
        "cutover": done
        or (f"the gate would refuse: {early} (force to override)" if early else None),
        "cutover_forced": done,
        "rollback": nothing_to_roll_back(routing) if rollback_to is None else None,
        "pause": "already paused" if paused else None,
        "resume": None if paused else "not paused",
    }
