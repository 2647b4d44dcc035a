"""`crossfade migrate start`: create the new index and seed every document into it.

Seeding copies text, metadata and a BM25 sparse vector for every document of the old index,
with no dense vector: it needs no model inference, so keyword search covers the whole corpus
from minute one, and the dense side fills in as documents are re-embedded. Re-running is safe:
a document already seeded with the same text (and any new vector it gained) is left alone.

An adopted collection (indexes.old.adopt) is checked first (stored text, identity of the old
model: proxy/migration/adoption.py); nothing is written if a check refuses. It is streamed as
it is, no JSONL ingest needed. `--into COLLECTION` puts the new index in a collection beside
it, on the same server (Qdrant, or Chroma: proxy/store/chroma_adopted.py). `--in-place` (an
adopted Qdrant collection, or crossfade's own edge shard) puts it in a new named
vector of the same collection or shard, beside the old vector: no point is copied, seeding
adds the BM25 vector to each.
"""

from __future__ import annotations

from typing import Any

from proxy.clock import now_iso
from proxy.config import Mode
from proxy.document import doc_of
from proxy.ingest import Progress, ensure_index
from proxy.migration.adoption import adopt_old
from proxy.migration.canary import record_canaries
from proxy.migration.cutover import AuditLog, load_routing, save_routing
from proxy.migration.worker import set_control
from proxy.point import make_point
from proxy.routing import Routing, routing_dict
from proxy.runtime import Runtime

STRATEGY_MODE = {"lazy": Mode.FUSED, "shadow": Mode.SHADOW, "rebuild": Mode.OLD}


def place_new_index(
    rt: Runtime, into: str | None, in_place: bool, vector: str | None, previous: Any = None
) -> dict[str, Any] | None:
    """Record where the new index goes (read by every later command, `serve` included):
    --into = a collection beside an adopted one; --in-place = a new named vector in the old
    index's collection or edge shard; neither = the config's indexes.new. A migration under
    way keeps its place when start is run again."""
    old = rt.settings.indexes.old
    if into and in_place:
        raise ValueError("--into and --in-place exclude each other")
    if into and old.adopt is None:
        raise ValueError("--into is for an adopted collection (indexes.old.adopt)")
    if into == old.collection and old.adopt is not None:
        raise ValueError(
            "--into names the adopted collection itself"
            + ("; use --in-place" if rt.store("old").named_vectors else "")
        )
    if in_place and not rt.store("old").named_vectors:
        raise ValueError(
            "--in-place adds a vector to the old index's edge shard (indexes.old.backend: edge) "
            "or to an adopted collection (indexes.old.adopt)"
        )
    running = previous is not None and previous.get("state") != "finished"
    if not (into or in_place) and (running if old.adopt is None else previous is not None):
        return rt.state.get("placement")  # type: ignore[no-any-return]
    placement = None
    if into:
        placement = {"collection": into, "vector": old.vector}
    elif in_place:
        name = vector or rt.model("new").fingerprint.name
        if name in (old.vector, old.sparse_vector, rt.settings.indexes.new.sparse_vector):
            raise ValueError(
                f"in place, the new vector needs another name than {name!r} (--vector NAME)"
            )
        if old.adopt is not None:
            placement = {"collection": old.collection, "vector": name}
        else:
            placement = {"engine": "edge", "path": old.path, "vector": name}
    if placement != rt.state.get("placement"):
        rt.state.set("placement", placement)
        rt.close_stores()  # reopened at the new place
    return placement


def _check_old_binding(rt: Runtime) -> None:
    """The old index must be the configured old model's (after a finished migration, the
    config's old side is the former new one)."""
    info = rt.store("old").info()
    if info is None:
        raise RuntimeError("the old index does not exist: ingest documents into it first")
    want = rt.model("old").fingerprint.id
    if info.fingerprint != want:
        raise RuntimeError(
            f"the old index is bound to model {info.fingerprint}, but the configured old model "
            f"is {want}: after `migrate finish`, models.old and indexes.old name what served"
        )


def start_migration(
    rt: Runtime,
    strategy: str = "lazy",
    progress: bool = True,
    into: str | None = None,
    in_place: bool = False,
    vector: str | None = None,
) -> dict[str, Any]:
    previous = rt.state.get("migration")
    adoption = adopt_old(rt)  # checks first: a refusal writes nothing
    _check_old_binding(rt)
    if previous and previous.get("state") == "finished" and rt.state.get("retired"):
        # The next migration starts from what the last one left: its new index is now old.
        rt.state.set("retired", None)
    place_new_index(rt, into, in_place, vector, previous)
    old, new = rt.store("old"), rt.store("new")
    old_info = old.info()
    assert old_info is not None
    new_info = ensure_index(rt, "new")
    total = old.count()
    bar = Progress("seed new index", total) if progress else None
    seeded = without_text = 0
    in_place_new = new.in_place  # seeding adds BM25 to the shared points
    for batch in old.scroll(256, ["text", "metadata", "text_sha256"]):
        ids = [p["doc_id"] for p in batch]
        if in_place_new:
            done = new.seeded(ids)
            todo = [p for p in batch if p["doc_id"] not in done]
        else:
            have = new.retrieve(ids, ["text_sha256"])
            todo = [
                p
                for p in batch
                if have.get(p["doc_id"], {}).get("text_sha256") != p.get("text_sha256")
            ]
        # Nothing to embed them from: counted, listed and blocking the gate (never skipped
        # silently) until they get text or an operator excludes them.
        textless = [(p["doc_id"], old.why_no_text(p["doc_id"])) for p in batch if "text" not in p]
        rt.state.mark_unembeddable(textless)
        rt.state.forget_unembeddable([p["doc_id"] for p in batch if "text" in p])
        without_text += len(textless)
        todo = [p for p in todo if "text" in p]
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
    if adoption is not None:
        state["adopted"] = {"collection": old.collection, **adoption}
    if rt.state.get("placement"):
        state["placement"] = rt.state.get("placement")
    rt.state.set("migration", state)
    rt.state.reset_reembedded()  # duplicates are counted per migration
    record_canaries(rt)  # hosted models: the vectors a silent model change would alter
    # The strategy decides what serves while the new index fills: lazy = fused + backfill,
    # hits re-embedded as the config's `migration.lazy` says (not persisted, so the config
    # stays the one place that decides); shadow = old served, new compared + backfill;
    # rebuild = old served + backfill only, then a gated swap: these two re-embed no hits.
    if strategy == "lazy":
        rt.state.delete("lazy")  # what an earlier shadow or rebuild start switched off
    else:
        set_control(rt.state, lazy=False)
    before, rollback_to = load_routing(rt.state, rt.settings)
    if previous and previous.get("state") == "finished":
        rollback_to = None  # nothing of the last migration is left to roll back to
    mode = STRATEGY_MODE.get(strategy)
    after = before
    if mode is not None and (mode is not before.mode or previous is not None):
        after = Routing(mode=mode, generation=before.generation + 1)
        save_routing(rt.state, after, rollback_to)  # a mode change, not a cutover
    # Every start is recorded: the audit log tells a migration's whole story, start to finish.
    AuditLog(rt.state).append(
        {
            "action": f"migrate start ({strategy})",
            "actor": "cli",
            "from": routing_dict(before),
            "to": routing_dict(after),
            "gate": None,
            "old": old_info.fingerprint,
            "new": new_info.fingerprint,
            **({"adopted": state["adopted"]} if adoption else {}),
            **({"without_text": without_text} if without_text else {}),
        }
    )
    out = {**state, "seeded": seeded, "migrated": new.count(dense_only=True)}
    if without_text:
        out["without_text"] = without_text
    return out
