"""`crossfade migrate start`: create the new index and seed every document into it.

Seeding copies text, metadata and a BM25 sparse vector for every document of the old index,
with no dense vector: it needs no model inference, so keyword search covers the whole corpus
from minute one, and the dense side fills in as documents are re-embedded. Re-running is safe:
a document already seeded with the same text (and any new vector it gained) is left alone.
"""

from __future__ import annotations

from typing import Any

from proxy.config import Mode
from proxy.ingest import Progress, doc_of, ensure_index, make_point, now_iso
from proxy.migration.canary import record_canaries
from proxy.migration.cutover import AUDIT, AuditLog, load_routing, routing_dict, save_routing
from proxy.migration.worker import set_control
from proxy.router import Routing
from proxy.runtime import Runtime

STRATEGY_MODE = {"lazy": Mode.FUSED, "shadow": Mode.SHADOW, "rebuild": Mode.OLD}


def start_migration(rt: Runtime, strategy: str = "lazy", progress: bool = True) -> dict[str, Any]:
    old, new = rt.store("old"), rt.store("new")
    old_info = old.info()
    if old_info is None:
        raise RuntimeError("the old index does not exist: ingest documents into it first")
    new_info = ensure_index(rt, "new")
    total = old.count()
    bar = Progress("seed new index", total) if progress else None
    seeded = 0
    for batch in old.scroll(256, ["text", "metadata", "text_sha256"]):
        have = new.retrieve([p["doc_id"] for p in batch], ["text_sha256"])
        todo = [
            p for p in batch if have.get(p["doc_id"], {}).get("text_sha256") != p["text_sha256"]
        ]
        if todo:
            new.upsert([make_point(rt, "new", doc_of(p)) for p in todo])
            seeded += len(todo)
        if bar:
            bar(len(batch))
    new.flush()
    state = {
        "state": "running",
        "strategy": strategy,
        "started_at": now_iso(),
        "old_fingerprint": old_info.fingerprint,
        "new_fingerprint": new_info.fingerprint,
        "documents": new.count(),
    }
    rt.state.set("migration", state)
    record_canaries(rt)  # hosted models: the vectors a silent model change would alter
    # The strategy decides what serves while the new index fills, and whether hits re-embed:
    # lazy = fused + lazy + backfill; shadow = old served, new compared + backfill;
    # rebuild = old served + backfill only, then a gated swap.
    set_control(rt.state, lazy=strategy == "lazy")
    before, rollback_to = load_routing(rt.settings)
    mode = STRATEGY_MODE.get(strategy)
    if mode is not None and mode is not before.mode:
        after = Routing(mode=mode, generation=before.generation + 1)
        save_routing(rt.settings, after, rollback_to)  # a mode change, not a cutover
        AuditLog(rt.settings.data_path(AUDIT)).append(
            {
                "action": f"migrate start ({strategy})",
                "actor": "cli",
                "from": routing_dict(before),
                "to": routing_dict(after),
                "gate": None,
            }
        )
    return {**state, "seeded": seeded, "migrated": new.count(dense_only=True)}
