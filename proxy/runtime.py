"""Wiring: models, stores and the searcher built from one Settings object.

Models load lazily per side so a command that needs only the old model (ingest into the old
index) never pays for the new one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import cached_property
from typing import Any

from proxy.config import Settings
from proxy.embedding import EmbeddingCache, QueryEmbedder, load_embedder, load_query_embedder
from proxy.every import Every
from proxy.journal import Journal
from proxy.migration.fitted import load_fit
from proxy.model import Embedder
from proxy.search import Coverage, Searcher
from proxy.sparse import Bm25Encoder
from proxy.state import WRITES, StateStore, StateUnavailable
from proxy.state.open import open_state
from proxy.store import VectorStore
from proxy.store.factory import open_store
from proxy.threads import lower_priority

SIDES = ("old", "new")


class Runtime:
    def __init__(self, settings: Settings, models: dict[str, Embedder] | None = None) -> None:
        self.settings = settings
        # Already-loaded models may be handed in (tests and tools that build several runtimes).
        self._models: dict[str, Embedder] = dict(models or {})
        self._stores: dict[str, VectorStore] = {}
        # Written since the last flush (proxy/writes.py flush_writes).
        self.unflushed = False
        self._drift: Every[dict[str, Any]] = Every(
            1.0, lambda: dict(self.state.get("model_drift") or {}), hold_on=(StateUnavailable,)
        )

    def writing(self) -> AbstractContextManager[None]:
        """Document writes run one at a time, in journal order (see proxy/writes.py): in this
        process, and across the fleet when the state is shared."""
        return self.state.exclusive(WRITES)

    def model_drift(self) -> dict[str, Any]:
        """Models whose canary drifted (proxy/migration/canary.py), per side; read from the
        migration state at most once a second (every vector write asks)."""
        return self._drift.get()

    def drift_changed(self) -> None:
        """A drift alarm was raised or lifted here: the next write reads it afresh."""
        self._drift.clear()

    def model(self, side: str) -> Embedder:
        if side not in self._models:
            self._models[side] = load_embedder(
                getattr(self.settings.models, side),
                self.settings.data_path(self.settings.model_cache),
            )
        return self._models[side]

    def query_model(self, side: str) -> Embedder:
        """The encoder of `side`'s queries: its model, or its `query_runtime` (checked)."""
        key = f"{side}:queries"
        if key not in self._models:
            self._models[key] = load_query_embedder(
                getattr(self.settings.models, side),
                self.model(side),
                self.settings.data_path(self.settings.model_cache),
            )
        return self._models[key]

    def fingerprints(self) -> dict[str, str]:
        return {side: self.model(side).fingerprint.id for side in SIDES}

    def store(self, side: str) -> VectorStore:
        if side not in self._stores:
            # The new index may have been placed by `migrate start` (--into, --in-place).
            # Bindings of adopted collections and edited texts: records of the shared state.
            placement = self.state.get("placement")
            self._stores[side] = open_store(self.settings, side, placement, self.state)
        return self._stores[side]

    @cached_property
    def bm25(self) -> Bm25Encoder:
        return Bm25Encoder(avg_len=self.settings.bm25_avg_len)

    @cached_property
    def embedding_cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.settings.data_path("cache/embeddings.sqlite"))

    @property
    def journal(self) -> Journal:
        return self.state.journal

    @cached_property
    def write_pool(self) -> ThreadPoolExecutor:
        """Threads for document writes only: a write waiting on its model or on the write
        lock never takes a thread a search needs (searches run on the default pool)."""
        return ThreadPoolExecutor(
            self.settings.writes.threads,
            thread_name_prefix="write",
            initializer=lower_priority,
            initargs=(self.settings.writes.nice,),
        )

    @cached_property
    def state(self) -> StateStore:
        return open_state(self.settings)

    def close_stores(self) -> None:
        """Drop the open stores (the next `store()` reopens them, e.g. at a new placement)."""
        for s in self._stores.values():
            s.close()
        self._stores.clear()

    def searcher(self) -> Searcher:
        size = self.settings.server.query_cache_size
        return Searcher(
            old_model=QueryEmbedder(self.query_model("old"), size),
            new_model=QueryEmbedder(self.query_model("new"), size),
            old_store=self.store("old"),
            new_store=self.store("new"),
            bm25=self.bm25,
            fusion=self.settings.fusion,
            coverage=Coverage(
                self.store("new"),
                self.settings.server.coverage_refresh_s,
                lambda: int(self.state.unembeddable()["count"]),
            ),
            fitted=load_fit(self.state, self.fingerprints()),
        )

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self._stores.values():
            s.close()
        self._stores.clear()
        if "write_pool" in self.__dict__:
            self.__dict__.pop("write_pool").shutdown(wait=True)
        for name in ("embedding_cache", "state"):
            if name in self.__dict__:
                self.__dict__.pop(name).close()
