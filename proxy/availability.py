"""Which indexes can be reached now, and what a serving mode can still answer with.

An index on a Qdrant server may be down (refused, timed out) while the proxy runs. The proxy
then keeps serving what it can, and says so:

    mode          index down   serves                                  marked
    fused         old          new dense + BM25 (new index)            degraded
    fused         new          old dense                               degraded
    old, shadow   old          new dense + BM25, if the new index      degraded
                               exists (BM25 covers every document)
    new           new          old dense (writes go on to both)        degraded
    any           what it      503 naming the index and the reason
                  needs, with
                  no fallback

A hosted model whose API fails (refused, 5xx, no answer within `query_timeout_s`) takes out
its dense list only, the index still answers the rest:

    mode          model down   serves                                  marked
    fused         new          old dense + BM25 (fused as at 0%)       degraded
    new           new          BM25 alone (or 503:                     degraded
                               server.bm25_when_model_down off)
    fused         old          new dense + BM25                        degraded
    old, shadow   old          new dense + BM25, as for its index down degraded

`serving_plan` is these tables as a pure function; `Health` probes the indexes (one cheap call
each, in their own threads, bounded by a timeout, the answer kept a second);
`search_available` runs a search on the plan and, if an index fails mid-request, re-plans
once without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.config import FusionConfig, Mode
from proxy.every import Every
from proxy.filters import Filter
from proxy.model import ModelUnavailable
from proxy.search import MISSING, Searcher, SearchResult, lists_for
from proxy.store import IndexUnavailable, VectorStore

log = logging.getLogger("crossfade")
SIDE_OF = {"old": "old", "new": "new", "bm25": "new"}


@dataclass(frozen=True)
class IndexState:
    reachable: bool
    exists: bool | None = None  # None: not known (never reached)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reachable": self.reachable, "exists": self.exists}
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class ServingPlan:
    lists: tuple[str, ...] = ()
    degraded: str | None = None  # set: serving without an index the mode wants
    error: str | None = None  # set: nothing to serve with (503)


def sides_of(lists: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(SIDE_OF[n] for n in lists))


def serving_plan(
    mode: Mode,
    fusion: FusionConfig,
    indexes: Mapping[str, IndexState],
    models_down: Mapping[str, str] | None = None,
    bm25_alone: bool = True,
) -> ServingPlan:
    """The lists to serve `mode` with, given which indexes answer and which models fail
    (`models_down`: side -> why; see the module's tables)."""
    plan = _index_plan(mode, fusion, indexes)
    if not models_down or plan.error:
        return plan
    lists = tuple(n for n in plan.lists if n not in models_down)
    if lists == plan.lists:
        return plan
    why = " and ".join(f"{s} model unavailable" for s in plan.lists if s in models_down)
    if not lists:  # only a dense list was wanted: fall back as for its index down
        usable = {s for s, st in indexes.items() if st.reachable and st.exists}
        fallback = ("bm25",) if mode is Mode.NEW else lists_for(Mode.FUSED, fusion)
        lists = tuple(n for n in fallback if SIDE_OF[n] in usable and n not in models_down)
    if lists == ("bm25",) and mode is Mode.NEW and not bm25_alone:
        lists = ()
    if not lists:
        return ServingPlan(error="; ".join(models_down[s] for s in sorted(models_down)))
    degraded = "; ".join(x for x in (plan.degraded, why) if x)
    return ServingPlan(lists, degraded=degraded)


def _index_plan(mode: Mode, fusion: FusionConfig, indexes: Mapping[str, IndexState]) -> ServingPlan:
    wanted = lists_for(mode, fusion)
    need = sides_of(wanted)
    down = [s for s in need if not indexes[s].reachable]
    if not down:
        missing = next((s for s in need if not indexes[s].exists), None)
        return ServingPlan(error=MISSING[missing]) if missing else ServingPlan(wanted)
    usable = {s for s, st in indexes.items() if st.reachable and st.exists}
    fallback = tuple(n for n in lists_for(Mode.FUSED, fusion) if SIDE_OF[n] in usable)
    if not fallback:
        return ServingPlan(error=unreachable_message(indexes, down))
    return ServingPlan(fallback, degraded=" and ".join(down) + " index unreachable")


def unreachable_message(indexes: Mapping[str, IndexState], sides: Sequence[str]) -> str:
    return "; ".join(indexes[s].error or f"{s} index unreachable" for s in sides)


def readiness(
    modes: set[Mode], fusion: FusionConfig, indexes: Mapping[str, IndexState]
) -> tuple[str | None, str | None]:
    """(why the proxy is not ready, or None; how its search is degraded, or None). Any
    unreachable index makes it not ready: writes need every index, and search is degraded."""
    down = [s for s, st in indexes.items() if not st.reachable]
    plans = [serving_plan(m, fusion, indexes) for m in sorted(modes)]
    degraded = next((p.degraded for p in plans if p.degraded), None)
    if down:
        return unreachable_message(indexes, down), degraded
    return next((p.error for p in plans if p.error), None), degraded


def probe(store: VectorStore) -> IndexState:
    """One cheap call (blocking); an embedded store's ping has nothing to reach."""
    store.ping()
    return IndexState(reachable=True, exists=store.info() is not None)


class Health:
    """Reachability of every index, probed with one cheap call each on a thread of its own
    (a hung server never ties up the threads searches run on), answered within `timeout_s`,
    and kept `ttl_s`: a flood of requests costs one probe per index per `ttl_s`. Concurrent
    callers share the probe in flight; an index whose last probe has not even returned yet
    counts as unreachable without being asked again."""

    def __init__(
        self,
        store: Callable[[str], VectorStore],
        sides: Sequence[str] = ("old", "new"),
        ttl_s: float = 1.0,
        timeout_s: float = 1.0,
        model_ttl_s: float = 5.0,
    ) -> None:
        self._store = store
        self.sides = tuple(sides)
        self.timeout_s = timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(
            len(self.sides), thread_name_prefix="index-probe"
        )
        self._running: dict[str, concurrent.futures.Future[IndexState]] = {}
        # The last probe's answer (or a request's finding since), asked again after ttl_s.
        self._state: Every[dict[str, IndexState]] = Every(ttl_s)
        self._inflight: asyncio.Future[dict[str, IndexState]] | None = None
        self.model_ttl_s = model_ttl_s
        self._models_down: dict[str, tuple[float, str]] = {}

    async def check(self) -> dict[str, IndexState]:
        if not self._state.stale():
            return self._state.value or {}
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._probe_all())
        return await asyncio.shield(self._inflight)

    async def _probe_all(self) -> dict[str, IndexState]:
        states = await asyncio.gather(*(self._probe(s) for s in self.sides))
        self._set(dict(zip(self.sides, states, strict=True)))
        return self._state.value or {}

    async def _probe(self, side: str) -> IndexState:
        store = self._store(side)
        if not store.remote:  # embedded: in memory, nothing to reach
            return probe(store)
        running = self._running.get(side)
        if running is None or running.done():
            running = self._running[side] = self._executor.submit(probe, store)
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(running)), self.timeout_s
            )
        except IndexUnavailable as e:
            return IndexState(False, None, str(e))
        except TimeoutError:
            return IndexState(
                False, None, f"{side} index unreachable: no answer within {self.timeout_s:g}s"
            )
        except Exception as e:  # anything else a probe raises is an unusable index too
            return IndexState(False, None, f"{side} index unreachable: {e}")

    def mark_down(self, e: IndexUnavailable) -> None:
        """A request found `e.side` down between probes: serve without it from now on."""
        known = self._state.value
        if known is not None and e.side in known:
            self._set({**known, e.side: IndexState(False, None, str(e))})

    def mark_model_down(self, e: ModelUnavailable) -> None:
        """A model's API failed a query: serve without its list for `model_ttl_s`, then try
        it again (one request finds out; the others meanwhile don't wait on it)."""
        side = e.side or "new"
        if side not in self._models_down:
            log.warning("%s model unavailable, serving without it: %s", side, e)
        self._models_down[side] = (time.monotonic() + self.model_ttl_s, str(e))

    def models_down(self) -> dict[str, str]:
        now = time.monotonic()
        for side, (until, _) in list(self._models_down.items()):
            if until <= now:
                del self._models_down[side]
                log.warning("%s model: trying it again", side)
        return {side: why for side, (_, why) in self._models_down.items()}

    def _set(self, state: dict[str, IndexState]) -> None:
        before = self._state.value or {}
        for side, st in state.items():
            was = before.get(side)
            if not st.reachable and (was is None or was.reachable):
                log.warning("%s", st.error)
            elif st.reachable and was is not None and not was.reachable:
                log.warning("%s index reachable again", side)
        self._state.put(state)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def search_available(
    searcher: Searcher,
    health: Health,
    mode: Mode,
    query: str,
    k: int,
    flt: Filter | None,
    fields: tuple[str, ...],
    bm25_alone: bool = True,
) -> tuple[SearchResult | None, ServingPlan]:
    """Search `mode` with the indexes and models that answer; (None, plan with `error`) if
    none can."""
    for _ in range(2 * len(health.sides) + 1):
        indexes = await health.check()
        plan = serving_plan(mode, searcher.fusion, indexes, health.models_down(), bm25_alone)
        if plan.error:
            return None, plan
        new_up = indexes["new"].reachable if "new" in indexes else True
        try:
            res = await searcher.search(
                query, k, mode, flt, fields, lists=plan.lists, refresh_coverage=new_up
            )
        except IndexUnavailable as e:  # went down since the last probe
            health.mark_down(e)
            continue
        except ModelUnavailable as e:  # its API failed this query: re-plan without it
            health.mark_model_down(e)
            continue
        return res, plan
    return None, ServingPlan(error="indexes unreachable (they failed while searched)")
