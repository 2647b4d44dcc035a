"""The query pipeline: embed with both models, run the ranked lists concurrently, fuse, hydrate.

Blocking work (model inference, engine calls) runs in worker threads so the event loop keeps
serving. Which lists run depends on the mode:

    old    old model over the old index (what clients had before the migration)
    fused  old + new + BM25, coverage-aware RRF (the migration)
    new    new model + BM25 over the new index (after cutover)

With an index unreachable, or a hosted model's API failing, proxy/availability.py picks the
lists left (degraded serving).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from proxy.adapter import fuse_vector
from proxy.config import FusionConfig, Mode
from proxy.embedding import QueryEmbedder
from proxy.errors import Unavailable
from proxy.every import Every
from proxy.filters import Filter
from proxy.fusion import Fused, FusionParams, Profile, fuse, params_for
from proxy.model import ModelUnavailable
from proxy.sparse import Bm25Encoder
from proxy.store import IndexUnavailable, VectorStore

log = logging.getLogger("crossfade")
MISSING = {
    "old": "the old index does not exist (run `crossfade ingest --index old`)",
    "new": "the new index does not exist (run `crossfade migrate start`)",
}
MODE_LISTS: dict[Mode, tuple[str, ...]] = {
    Mode.OLD: ("old",),
    Mode.SHADOW: ("old",),
    Mode.FUSED: ("old", "new", "bm25"),
    Mode.NEW: ("new", "bm25"),
}


def lists_for(mode: Mode, fusion: FusionConfig) -> tuple[str, ...]:
    if mode is Mode.NEW and not fusion.bm25_after_cutover:
        return ("new",)
    return MODE_LISTS[mode]


@dataclass
class Candidates:
    ranked: dict[str, list[str]]
    migrated: set[str]


@dataclass
class SearchResult:
    mode: Mode
    coverage: float
    hits: list[Fused]
    payloads: dict[str, dict[str, Any]]


class Coverage:
    """Share of documents in the new index that hold a new-model vector, recounted at most
    every `refresh_s` seconds (a count per query would cost more than the query): off the
    event loop, one recount at a time (queries arriving meanwhile share it). The embedded
    engine's exact count (`blocking_count`) holds the GIL for its whole run (0.5 s for the
    two counts at a million documents, measured: loadtest/scale.py), stopping every request
    meanwhile; so a recount that took `c` seconds is not repeated for `COST_RATIO * c` (at
    least `refresh_s`): counts never take more than 1/COST_RATIO of the serving time."""

    COST_RATIO = 50.0

    def __init__(
        self,
        store: VectorStore | None,
        refresh_s: float,
        outside: Callable[[], int] = lambda: 0,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        # Documents the new index can't hold (no text to embed): missing, never left out.
        self.outside = outside
        self.value = 0.0
        self.total = 0
        self.migrated = 0
        self._counted: Every[float] = Every(refresh_s)
        self._lock = asyncio.Lock()

    def recount(self) -> float:
        try:
            if self.store is None or self.store.info() is None:
                self.total = self.migrated = 0
                self.value = 0.0
            else:
                t0 = time.perf_counter()
                self.total = self.store.count() + self.outside()
                self.migrated = self.store.count(dense_only=True)
                self.value = self.migrated / self.total if self.total else 0.0
                if self.store.blocking_count:  # a server's count stops nothing here
                    took = time.perf_counter() - t0
                    self._counted.seconds = max(self.refresh_s, self.COST_RATIO * took)
        except Unavailable as e:  # an index or the state store: keep the last count
            log.debug("coverage not recounted: %s", e)
        return self._counted.put(self.value)

    async def refresh(self) -> float:
        async with self._lock:
            await asyncio.to_thread(self.recount)
        return self.value

    async def get(self) -> float:
        if self._counted.stale():
            async with self._lock:
                if self._counted.stale():
                    await asyncio.to_thread(self.recount)
        return self.value


class PayloadFields:
    """Which payload paths some document of an index holds, asked of the store (one matching
    point is enough), and remembered: a path seen stays known, a path not seen is asked again
    after `absent_ttl_s` (a write may add it), so a client repeating a filter on a key that
    no document has does not make the store look every time."""

    def __init__(self, absent_ttl_s: float) -> None:
        self.absent_ttl_s = absent_ttl_s
        self._seen: set[tuple[str, str]] = set()
        self._absent: dict[tuple[str, str], float] = {}

    def missing(self, store: VectorStore, fields: list[str]) -> list[str]:
        """The `fields` no point of `store` holds (blocking)."""
        out = []
        now = time.monotonic()
        for f in fields:
            key = (store.name, f)
            if key in self._seen:
                continue
            if now - self._absent.get(key, float("-inf")) < self.absent_ttl_s:
                out.append(f)
            elif store.has_payload_field(f):
                self._seen.add(key)
                self._absent.pop(key, None)
            else:
                self._absent[key] = now
                out.append(f)
        return out


def holding_new(
    store: VectorStore,
    old_hits: list[tuple[str, float]],
    new_hits: list[tuple[str, float]],
    coverage: float,
) -> set[str]:
    """The hits of an old-model vector's two lists that hold a new vector: every hit of the
    new list, and those of the old list the new index holds (at 100%: all of them)."""
    held = {d for d, _ in new_hits}
    if coverage >= 1.0:
        return held | {d for d, _ in old_hits}
    return held | store.with_dense([d for d, _ in old_hits]) if old_hits else held


class Searcher:
    def __init__(
        self,
        old_model: QueryEmbedder | None,
        new_model: QueryEmbedder | None,
        old_store: VectorStore | None,
        new_store: VectorStore | None,
        bm25: Bm25Encoder,
        fusion: FusionConfig,
        coverage: Coverage,
        fitted: Profile | None = None,
    ) -> None:
        # The fusion fitted on this deployment's labelled queries (proxy/migration/fitted.py);
        # None = the config's label-free rule. Swapped whole by one assignment.
        self.fitted = fitted
        self.old_model = old_model
        self.new_model = new_model
        self.old_store = old_store
        self.new_store = new_store
        self.bm25 = bm25
        self.fusion = fusion
        self.coverage = coverage
        self.payload_fields = PayloadFields(coverage.refresh_s)

    async def _dense(
        self,
        side: str,
        model: QueryEmbedder,
        store: VectorStore,
        query: str,
        depth: int,
        flt: Filter | None,
    ) -> list[str]:
        try:
            # Micro-batched with concurrent requests. (Not the one-hop path `_single` takes
            # when the model is idle: here it cost fused@16 19% of its QPS, since the requests
            # arriving meanwhile queued behind a batch of one.)
            vec = await model.aembed(query)
            hits = await asyncio.to_thread(store.search_dense, vec, depth, flt)
        except ModelUnavailable as e:  # say which model: the caller serves around it
            raise ModelUnavailable(e.model, e.reason, side) from e
        return [d for d, _ in hits]

    def _sparse(self, store: VectorStore, query: str, depth: int, flt: Filter | None) -> list[str]:
        if not store.sparse:  # no BM25 (a Chroma index without its sidecar): left out
            return []
        return [d for d, _ in store.search_sparse(self.bm25.query(query), depth, flt)]

    def ready_for(self, mode: Mode) -> str | None:
        """Why `mode` cannot be served now, or None."""
        lists = MODE_LISTS[mode]
        try:
            if "old" in lists and (self.old_store is None or self.old_store.info() is None):
                return MISSING["old"]
            if {"new", "bm25"} & set(lists) and (
                self.new_store is None or self.new_store.info() is None
            ):
                return MISSING["new"]
        except IndexUnavailable as e:
            return str(e)
        return None

    async def candidates(
        self, query: str, lists: tuple[str, ...], depth: int, flt: Filter | None = None
    ) -> Candidates:
        # Started longest first: the new model's embedding is the critical path, and an engine
        # call started before it would hold the GIL while its thread waits to begin.
        jobs: dict[str, asyncio.Future[list[str]]] = {}
        if "new" in lists:
            assert self.new_model and self.new_store
            jobs["new"] = asyncio.ensure_future(
                self._dense("new", self.new_model, self.new_store, query, depth, flt)
            )
        if "old" in lists:
            assert self.old_model and self.old_store
            jobs["old"] = asyncio.ensure_future(
                self._dense("old", self.old_model, self.old_store, query, depth, flt)
            )
        if "bm25" in lists:
            assert self.new_store
            jobs["bm25"] = asyncio.ensure_future(
                asyncio.to_thread(self._sparse, self.new_store, query, depth, flt)
            )
        check = None
        if "new" in jobs and self.new_store is not None and self.coverage.value < 1.0:
            # Candidates outside the new top-N may still hold a new vector (at 100% all do):
            # checked as soon as the other lists are in, while the new model still embeds.
            others = [jobs[n] for n in ("old", "bm25") if n in jobs]
            check = self._holding_new(self.new_store, others)
        results = await asyncio.gather(*jobs.values(), *([check] if check else []))
        ranked = dict(zip(jobs, results[: len(jobs)], strict=True))
        if "new" in ranked and self.coverage.value >= 1.0:
            return Candidates(ranked, {d for r in ranked.values() for d in r})
        migrated: set[str] = set(ranked.get("new", ()))
        if check is not None:
            migrated |= results[-1]
        return Candidates(ranked, migrated)

    @staticmethod
    async def _holding_new(store: VectorStore, lists: list[asyncio.Future[list[str]]]) -> set[str]:
        ids = {d for ranked in await asyncio.gather(*lists) for d in ranked}
        return await asyncio.to_thread(store.with_dense, sorted(ids))

    def params(
        self, mode: Mode, coverage: float, lists: tuple[str, ...] | None = None
    ) -> FusionParams:
        """Fusion for `mode`: coverage-aware only in fused mode; `new` fuses as at 100%.
        Other `lists` than the mode's own (degraded serving) fuse as in fused mode; old + BM25
        without the new list (the new model failing) fuse as at 0% coverage: every document
        gets its new rank imputed, as if none were migrated."""
        if lists is not None and lists != lists_for(mode, self.fusion):
            mode = Mode.FUSED
        if lists == ("old", "bm25"):
            lists, coverage = MODE_LISTS[Mode.FUSED], 0.0
        p = params_for(self.fusion, 1.0 if mode is Mode.NEW else coverage, self.fitted)
        fused = mode is Mode.FUSED
        return replace(
            p,
            impute_missing=p.impute_missing and fused,
            scale_new_ranks=p.scale_new_ranks and fused,
            lists=lists or lists_for(mode, self.fusion),
        )

    async def search(
        self,
        query: str,
        k: int,
        mode: Mode,
        flt: Filter | None = None,
        fields: tuple[str, ...] = ("text", "metadata"),
        lists: tuple[str, ...] | None = None,
        refresh_coverage: bool = True,
    ) -> SearchResult:
        """`lists` overrides the mode's own (degraded serving: see proxy/availability.py);
        with the new index down, `refresh_coverage=False` serves the last coverage counted."""
        coverage = await self.coverage.get() if refresh_coverage else self.coverage.value
        lists = lists or lists_for(mode, self.fusion)
        if len(lists) == 1 and lists != ("bm25",):
            return await self._single(query, k, mode, lists[0], flt, fields, coverage)
        depth = max(self.fusion.candidates, k)
        cands = await self.candidates(query, lists, depth, flt)
        hits = fuse(cands.ranked, self.params(mode, coverage, lists), cands.migrated, k)
        serving = self.serving_store(lists)
        payloads = await asyncio.to_thread(serving.retrieve, [h.doc_id for h in hits], fields)
        return SearchResult(mode=mode, coverage=coverage, hits=hits, payloads=payloads)

    async def search_vector(
        self,
        vector: np.ndarray,
        mapped: np.ndarray | None,
        k: int,
        mode: Mode,
        lists: tuple[str, ...],
        flt: Filter | None = None,
        fields: tuple[str, ...] = ("text", "metadata"),
    ) -> SearchResult:
        """An old-model query vector (an app that embeds its queries itself): searched as it is
        in the old index, and through the query map (`mapped`) in the new one, fused as
        proxy/adapter.py says: the sum of each list's z-scores (no BM25: there is no text).
        `lists`: ("old",), ("old", "new") or ("new",) (after `migrate finish`)."""
        coverage = await self.coverage.get()
        if lists == ("old",):
            assert self.old_store is not None
            rows = await asyncio.to_thread(self.old_store.query_dense, vector, k, flt, fields)
            hits = [
                Fused(doc_id=p["doc_id"], score=s, ranks={"old": r}, migrated=False)
                for r, (p, s) in enumerate(rows, start=1)
            ]
            return SearchResult(mode, coverage, hits, {p["doc_id"]: p for p, _ in rows})
        assert mapped is not None and self.new_store is not None
        depth = max(self.fusion.candidates, k)
        jobs: dict[str, Any] = {
            "new": asyncio.to_thread(self.new_store.search_dense, mapped, depth, flt)
        }
        if "old" in lists:
            assert self.old_store is not None
            jobs["old"] = asyncio.to_thread(self.old_store.search_dense, vector, depth, flt)
        found = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
        old_hits, new_hits = found.get("old", []), found["new"]
        migrated = {d for d, _ in new_hits}
        if coverage >= 1.0:
            migrated |= {d for d, _ in old_hits}
        elif old_hits:
            migrated |= await asyncio.to_thread(self.new_store.with_dense, [d for d, _ in old_hits])
        hits = fuse_vector(old_hits, new_hits, migrated, k)
        payloads = await asyncio.to_thread(
            self.new_store.retrieve, [h.doc_id for h in hits], fields
        )
        return SearchResult(mode, coverage, hits, payloads)

    def serving_store(self, lists: tuple[str, ...]) -> VectorStore:
        """The index whose payloads answer a search over `lists` (the new one holds every
        document from the migration's start; the old one alone serves the old list)."""
        store = self.old_store if lists == ("old",) else self.new_store
        assert store is not None
        return store

    async def filter_warnings(self, flt: Filter | None, lists: tuple[str, ...]) -> list[str]:
        """A warning per filter key that no document holds: such a condition matches nothing
        (or, under must_not, excludes nothing), which is most often a typo."""
        if flt is None:
            return []
        store = self.serving_store(lists)
        missing = await asyncio.to_thread(self.payload_fields.missing, store, flt.fields())
        prefix = "metadata."
        return [
            f"unknown filter key {f.removeprefix(prefix)!r}: no document has this metadata key"
            for f in missing
        ]

    async def _single(
        self,
        query: str,
        k: int,
        mode: Mode,
        name: str,
        flt: Filter | None,
        fields: tuple[str, ...],
        coverage: float,
    ) -> SearchResult:
        """One dense list, nothing to fuse: embed, one search returning the payloads."""
        model, store = (
            (self.old_model, self.old_store) if name == "old" else (self.new_model, self.new_store)
        )
        assert model is not None and store is not None
        try:
            rows = await self._single_rows(model, store, query, k, flt, fields)
        except ModelUnavailable as e:
            raise ModelUnavailable(e.model, e.reason, name) from e
        hits = [
            Fused(doc_id=p["doc_id"], score=s, ranks={name: r}, migrated=name == "new")
            for r, (p, s) in enumerate(rows, start=1)
        ]
        return SearchResult(mode, coverage, hits, {p["doc_id"]: p for p, _ in rows})

    async def _single_rows(
        self,
        model: QueryEmbedder,
        store: VectorStore,
        query: str,
        k: int,
        flt: Filter | None,
        fields: tuple[str, ...],
    ) -> list[tuple[dict[str, Any], float]]:
        if model.idle:
            # Nothing to batch with: embed and search in one hop, on the model's own thread.
            rows = await asyncio.get_running_loop().run_in_executor(
                model.executor, lambda: store.query_dense(model.embed(query), k, flt, fields)
            )
        else:
            vec = await model.aembed(query)
            rows = await asyncio.to_thread(store.query_dense, vec, k, flt, fields)
        return rows
