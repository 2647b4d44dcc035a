"""Cutover and rollback: the serving pointer, the audit log and the quality gate.

The serving pointer (mode, traffic split, generation) is one record of the migration state
(proxy/state), written whole or not at all. In the running proxy
it is one immutable `Routing` object swapped by a single assignment, so every request sees
either the old or the new pointer, whole. With the Qdrant-server backend the pointer is
mirrored to a collection alias (`<new collection>_serving`) that clients outside the proxy can
follow. Dual writes continue after cutover, which is what makes rollback lossless.

Rollback undoes the last cutover and nothing else: the pointer keeps the routing that
served before the last cutover (`rollback_to`), a rollback restores it and clears it. A second
rollback finds nothing to undo and is refused; it can never switch forward past the gate.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from proxy.beir import Beir
from proxy.clock import now_iso
from proxy.config import CutoverConfig, Mode, Settings
from proxy.evaluation import score_run
from proxy.routing import Routing, routing_dict
from proxy.search import Searcher
from proxy.state import Pointer, StateStore


def load_routing(state: StateStore, settings: Settings) -> tuple[Routing, Routing | None]:
    """The serving pointer and the routing to roll back to (None: no cutover to undo). Before
    the first switch there is none stored: the config's mode and split are the pointer."""
    pointer = state.pointer()
    if pointer is None:
        r = settings.routing
        return Routing(settings.mode, r.split_mode, r.split_percent if r.split_mode else 0.0), None
    return pointer.routing, pointer.rollback_to


def save_routing(state: StateStore, routing: Routing, rollback_to: Routing | None) -> None:
    state.save_pointer(Pointer(routing, rollback_to))


def describe(r: Routing) -> str:
    """The pointer in words, for start-up lines, the CLI and refusals."""
    split = (
        f", split {r.split_percent:g}% -> {r.split_mode.value}"
        if r.split_mode and r.split_percent > 0
        else ", no split"
    )
    return f"mode={r.mode.value}{split}, generation {r.generation}"


def why_no_cutover(routing: Routing) -> str | None:
    """Why a cutover has nothing to do (None: it may run)."""
    if routing.mode is Mode.NEW and not (routing.split_mode and routing.split_percent > 0):
        return f"already cut over: serving new ({describe(routing)})"
    return None


def nothing_to_roll_back(routing: Routing) -> str:
    """The refusal of a rollback when no cutover is left to undo."""
    return (
        "nothing to roll back: no cutover since the last rollback "
        f"(serving {describe(routing)}); `crossfade mode` changes the mode"
    )


def new_too_early(coverage: float, gate: CutoverConfig) -> str | None:
    """Why serving `new` at this coverage would miss documents (None: it may serve)."""
    if coverage * 100 < gate.min_coverage:
        return f"coverage {100 * coverage:.2f}% < required {gate.min_coverage:g}%"
    return None


class AuditLog:
    """Who, when, what, from, to, and the gate's numbers: appended to the state's audit log
    (durably: a file fsynced, or a shared table)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"at": now_iso(), **entry}
        self.state.audit_append(entry)
        return entry

    def tail(self, n: int | None = 50) -> list[dict[str, Any]]:
        """The last `n` entries, oldest first (None: every entry)."""
        return self.state.audit_tail(n)

    def reconcile(self, routing: Routing) -> dict[str, Any] | None:
        """The pointer is written before its audit entry; a crash between the two leaves a
        switch unrecorded. Record it at start-up, marked as recovered."""
        last = next((e for e in reversed(self.tail(200)) if e.get("to")), None)
        logged = int(last["to"].get("generation", 0)) if last else 0
        if routing.generation <= logged:
            return None
        return self.append(
            {
                "action": "recovered",
                "actor": "crossfade",
                "note": "the serving pointer moved but the process died before its audit "
                "entry was written",
                "from": last["to"] if last else None,
                "to": routing_dict(routing),
            }
        )


async def measure(searcher: Searcher, data: Beir, mode: Mode) -> dict[str, float]:
    """Quality and latency of one mode on labelled queries, through the serving path."""
    run: dict[str, list[str]] = {}
    took: list[float] = []
    for qid, text in data.queries.items():
        t0 = time.perf_counter()
        res = await searcher.search(text, 10, mode, fields=())
        took.append(time.perf_counter() - t0)
        run[qid] = [h.doc_id for h in res.hits]
    scores = score_run(run, data.qrels)
    return {
        "ndcg@10": scores["ndcg@10"],
        "recall@10": scores["recall@10"],
        "p95_ms": round(float(np.percentile(took, 95)) * 1000, 2) if took else 0.0,
        "queries": len(run),
    }


def decide(
    coverage: float,
    old: dict[str, float],
    new: dict[str, float],
    gate: CutoverConfig,
    unembeddable: int = 0,
) -> list[str]:
    """Why the gate refuses (empty = it holds). Pure."""
    why = []
    early = new_too_early(coverage, gate)
    if early:
        why.append(early)
    if unembeddable:
        why.append(
            f"{unembeddable} documents cannot be re-embedded (no text): give them text or "
            "exclude them (`crossfade migrate exclude ID...`)"
        )
    if new["ndcg@10"] < old["ndcg@10"] - gate.max_ndcg_drop:
        why.append(
            f"nDCG@10 new {new['ndcg@10']:.4f} < old {old['ndcg@10']:.4f}"
            + _minus(gate.max_ndcg_drop)
        )
    if new["recall@10"] < old["recall@10"] - gate.max_recall_drop:
        why.append(
            f"recall@10 new {new['recall@10']:.4f} < old {old['recall@10']:.4f}"
            + _minus(gate.max_recall_drop)
        )
    if gate.max_p95_ms and new["p95_ms"] > gate.max_p95_ms:
        why.append(f"p95 new {new['p95_ms']:.1f} ms > {gate.max_p95_ms:g} ms")
    return why


def _minus(tolerance: float) -> str:
    # A tolerance of 0 is no tolerance: "old 0.4085 - 0" reads like a formula left unfinished.
    return f" - {tolerance:g} tolerance" if tolerance else ""


async def evaluate_gate(
    searcher: Searcher, data: Beir, gate: CutoverConfig, unembeddable: int = 0
) -> dict[str, Any]:
    coverage = await searcher.coverage.refresh()
    old = await measure(searcher, data, Mode.OLD)
    new = await measure(searcher, data, Mode.NEW)
    why = decide(coverage, old, new, gate, unembeddable)
    return {"ok": not why, "refused_because": why, "coverage": coverage, "old": old, "new": new}
