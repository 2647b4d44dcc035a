"""Which adapter holds a side's index: edge, Qdrant server, Chroma, or an adopted collection
(Qdrant's or Chroma's), at the placement `migrate start` chose. The adapters import the
protocol (proxy/store/__init__.py); this module imports them, so none imports the module that
imports it."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from proxy.config import IndexConfig, Settings
from proxy.store import Records, VectorStore


def chroma_bm25_dir(settings: Settings, cfg: IndexConfig) -> Path:
    """BM25 beside a Chroma collection (Chroma has none), keyed by the collection, not the
    side: after a finish the same collection is the old index, with the same sidecar."""
    scope = f"{cfg.tenant or 'default_tenant'}/{cfg.database or 'default_database'}"
    return settings.data_path(f"chroma-bm25/{scope}/{cfg.collection}")


def is_edge_in_place(settings: Settings, placement: dict[str, Any] | None) -> bool:
    """Whether the new index is a vector added in place to the old index's edge shard."""
    old = settings.indexes.old
    return bool(
        placement
        and placement.get("engine") == "edge"
        and old.backend == "edge"
        and placement.get("path") == old.path
        # after a finish the config names that vector as the old index: it is not new any more
        and placement.get("vector") != old.vector
    )


def open_store(
    settings: Settings, which: str, placement: dict[str, Any] | None, records: Records
) -> VectorStore:
    """`placement`: where `migrate start --into/--in-place` put the new index (an adopted
    collection's, or in place in the old index's edge shard); `records`: the migration
    state's, where an adopted collection's binding and edited texts live (shared by a fleet)."""
    cfg: IndexConfig = getattr(settings.indexes, which)
    old = settings.indexes.old
    if old.adopt is not None and old.backend == "chroma":
        from proxy.store.chroma_adopted import open_adopted_chroma

        adopted = open_adopted_chroma(
            settings, which, placement, partial(chroma_bm25_dir, settings), records
        )
        if adopted is not None:
            return adopted
    elif old.adopt is not None:
        from proxy.store.adopted import open_adopted

        return open_adopted(settings, which, placement, records)  # type: ignore[no-any-return]
    if which == "new" and is_edge_in_place(settings, placement):
        from proxy.store.edge import EdgeStore

        assert placement is not None
        view = cfg.model_copy(
            update={"backend": "edge", "path": old.path, "vector": placement["vector"]}
        )
        return EdgeStore(which, settings.data_path(old.path or "old"), view, primary=old.vector)
    if cfg.backend == "edge":
        from proxy.store.edge import EdgeStore

        return EdgeStore(which, settings.data_path(cfg.path or which), cfg)
    if cfg.backend == "chroma":
        from proxy.store.chroma import ChromaStore

        return ChromaStore(which, cfg, chroma_bm25_dir(settings, cfg))
    from proxy.store.server import ServerStore

    return ServerStore(which, cfg)
