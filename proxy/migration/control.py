"""The control plane of a running proxy: the serving pointer, switches (mode, split, cutover,
rollback) with their audit trail, and the shadow comparison's running figures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from proxy.beir import Beir
from proxy.config import Mode
from proxy.migration.cutover import (
    AUDIT,
    AuditLog,
    evaluate_gate,
    load_routing,
    routing_dict,
    save_routing,
)
from proxy.router import Routing, overlap_at_k, rank_biased_overlap, route
from proxy.runtime import Runtime
from proxy.search import Searcher


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
        self.routing, self.previous = load_routing(rt.settings)
        if self.routing.split_mode is None and rt.settings.routing.split_mode is not None:
            r = rt.settings.routing
            self.routing = replace(
                self.routing, split_mode=r.split_mode, split_percent=r.split_percent
            )
        self.audit = AuditLog(rt.settings.data_path(AUDIT))
        self.audit.reconcile(self.routing)
        self.shadow = ShadowStats()
        self.last_gate: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    def route(self, key: str | None, override: Mode | None) -> tuple[Mode, int]:
        r = self.routing  # one read: the request is routed wholly by this snapshot
        return route(r, key, override), r.generation

    def modes_in_use(self) -> set[Mode]:
        r = self.routing
        return {r.mode} | ({r.split_mode} if r.split_mode and r.split_percent > 0 else set())

    async def switch(
        self, target: Routing, action: str, actor: str, gate: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        async with self._lock:
            return await self._switch(target, action, actor, gate)

    async def _switch(
        self, target: Routing, action: str, actor: str, gate: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Move the Qdrant alias (if any), persist the pointer (atomic rename), then swap it in
        memory (one assignment). The alias goes first: it is the step that can fail on a
        network, and failing there changes nothing; if the pointer can't be saved after it,
        the alias is moved back. Callers hold `_lock`: control operations run one at a time,
        so a rollback asked for while a cutover is being evaluated waits for it and then
        undoes it."""
        before = self.routing
        new = replace(target, generation=before.generation + 1)
        await asyncio.to_thread(self._mirror_alias, new)
        try:
            await asyncio.to_thread(save_routing, self.settings, new, before)
        except BaseException:
            await asyncio.to_thread(self._mirror_alias, before)
            raise
        self.previous, self.routing = before, new
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

    def _mirror_alias(self, routing: Routing) -> None:
        """Qdrant server: point `<new collection>_serving` at the collection now serving."""
        new = self.rt.store("new")
        old = self.rt.store("old")
        set_alias = getattr(new, "set_alias", None)
        if set_alias is None or new.info() is None:
            return
        target = new if routing.mode is Mode.NEW else old
        set_alias(f"{new.collection}_serving", target.collection)  # type: ignore[attr-defined]

    async def cutover(
        self, searcher: Searcher, data: Beir | None, force: bool, actor: str
    ) -> tuple[bool, dict[str, Any]]:
        if data is None and not force:
            return False, {"ok": False, "refused_because": ["no labelled queries to gate on"]}
        async with self._lock:
            gate = await evaluate_gate(searcher, data, self.settings.cutover) if data else None
            self.last_gate = gate
            if gate is not None and not gate["ok"] and not force:
                await asyncio.to_thread(
                    self.audit.append, {"action": "cutover refused", "actor": actor, "gate": gate}
                )
                return False, gate
            action = "cutover (forced)" if force else "cutover"
            entry = await self._switch(Routing(mode=Mode.NEW), action, actor, gate)
        return True, {**(gate or {"ok": None}), "forced": force, "audit": entry}

    async def rollback(self, actor: str) -> dict[str, Any]:
        """Back to the pointer before the last switch (or to `old` if there was none)."""
        async with self._lock:
            target = self.previous or Routing(mode=Mode.OLD)
            return await self._switch(target, "rollback", actor, None)
