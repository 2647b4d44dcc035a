"""Start-up (models loaded, index files warmed, crashed writes re-applied) and the background
loops that run for the server's life: the re-embedding worker, coverage samples for the
dashboard, canaries."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from proxy.adapter import needs_refit
from proxy.api.services import Services
from proxy.every import Every
from proxy.migration.canary import check_canaries
from proxy.migration.fitted import load_fit
from proxy.migration.query_map import fit_map, load_map
from proxy.runtime import SIDES, Runtime
from proxy.security import redact_access_log
from proxy.state import StateUnavailable
from proxy.store import IndexUnavailable
from proxy.writes import flush_writes, replay_journal, retry_journal

log = logging.getLogger("crossfade")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    sv: Services = app.state.services
    rt = sv.rt
    redact_access_log()  # after uvicorn has configured its loggers
    # Models load before the first request is accepted (uvicorn waits for startup).
    sv.start(await asyncio.to_thread(rt.searcher))
    await asyncio.to_thread(warm_indexes, rt)  # ready means warm: no first query reads disk
    await sv.searcher.coverage.refresh()
    await sv.health.check()  # logs any index it cannot reach; serving starts regardless
    await asyncio.to_thread(recover_writes, sv)
    if rt.state.shared:  # BM25 sidecars: built if missing, caught up with the fleet's writes
        await asyncio.to_thread(sv.sidecars.catch_up)
    checked = asyncio.Event()  # the first canary check is done (or there is none to do)
    tasks = [
        asyncio.create_task(follow_fleet(sv)),
        asyncio.create_task(reembed_after(checked, sv)),
        asyncio.create_task(sample_history(sv)),
        asyncio.create_task(watch_canaries(sv, checked)),
        asyncio.create_task(retry_writes(sv)),
        asyncio.create_task(flush_every(sv)),
        asyncio.create_task(keep_query_map(sv)),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, *sv.background, return_exceptions=True)
    await asyncio.get_running_loop().run_in_executor(rt.write_pool, flush_writes, rt)
    sv.health.close()
    await asyncio.to_thread(rt.close)


def warm_indexes(rt: Runtime) -> int:
    """The indexes' search files into the page cache (VectorStore.warm), within half of the
    memory free now: a box too small for them serves as before, reading them as it goes.
    Returns the bytes read."""
    try:
        budget = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):  # an OS that does not say (macOS): warm nothing
        budget = 0
    t0, read = time.perf_counter(), 0
    for side in SIDES:
        try:
            read += rt.store(side).warm(budget - read)
        except (OSError, IndexUnavailable) as e:  # slower first queries, nothing worse
            log.warning("%s index not warmed: %s", side, e)
    if read:
        log.info("index files warmed: %.1f MB in %.1f s", read / 2**20, time.perf_counter() - t0)
    return read


def recover_writes(sv: Services) -> None:
    """Finish document writes a crash cut short, before serving (see proxy/journal.py).
    If an index is unreachable now, the next write retries them first."""
    try:
        with sv.rt.writing():
            n = replay_journal(sv.rt)
        if n:
            log.warning("re-applied %d document write batch(es) left by a crash", n)
    except Exception as e:
        log.error("could not re-apply unfinished document writes yet: %s", e)


async def retry_writes(sv: Services, every_s: float = 1.0) -> None:
    """Retry the write journal's batches an index refused, when their backoff is up, until
    every index has them (proxy/writes.py); on the write threads, never the search ones."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(sv.rt.write_pool, retry_journal, sv.rt)
        except StateUnavailable as e:  # said once by the pointer's follower, not every second
            log.debug("write journal retry: %s", e)
        except Exception as e:  # an index still down: logged, tried again after the backoff
            log.warning("write journal retry: %s", e)
        await asyncio.sleep(every_s)


async def flush_every(sv: Services) -> None:
    """Flush what was written every `writes.flush_interval_s` (proxy/writes.py)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(sv.settings.writes.flush_interval_s)
        try:
            await loop.run_in_executor(sv.rt.write_pool, flush_writes, sv.rt)
        except Exception as e:  # an index down: its writes are still in the journal
            log.warning("flush: %s", e)


async def keep_query_map(sv: Services, every_s: float = 5.0) -> None:
    """The old -> new query map for apps that send old-model vectors: the stored one at
    start-up, refitted off the event loop as coverage grows (proxy/migration/query_map.py)."""
    rt, cfg = sv.rt, sv.settings.vector_clients
    if cfg.adapter == "off":
        return
    with suppress(Exception):
        sv.query_map = await asyncio.to_thread(load_map, rt)
    while True:
        try:
            if needs_refit(sv.query_map, sv.searcher.coverage.migrated, cfg):
                sv.query_map = await asyncio.to_thread(fit_map, rt) or sv.query_map
        except Exception as e:  # an index down, or the old one retired: keep the last map
            log.debug("query map not refitted: %s", e)
        await asyncio.sleep(every_s)


async def sample_history(sv: Services) -> None:
    """Coverage points for the dashboard's chart even when nobody is looking: the searcher's
    coverage counts (recounted only if stale), the queue depth and the rate."""
    rt = sv.rt
    while True:
        # A failed sample is a gap in a chart, never a crash.
        with suppress(Exception):
            cov = sv.searcher.coverage
            await cov.get()
            depth = await asyncio.to_thread(rt.state.depth)
            rate = round(sv.worker.stats.rate(), 2)
            sv.history.record(round(cov.value, 4), cov.migrated, cov.total, depth["total"], rate)
        await asyncio.sleep(sv.settings.server.history_interval_s)


async def reembed_after(checked: asyncio.Event, sv: Services) -> None:
    """The re-embed worker, once the start-up canary check is done: a model that changed
    while the proxy was down must be caught before the backfill writes its vectors (searches
    queue their hits meanwhile). With `migration.in_serve: false`, `crossfade worker`
    processes re-embed instead (this replica only enqueues)."""
    if not sv.settings.migration.in_serve:
        sv.worker.stats.state = "off (crossfade worker re-embeds)"
        return
    await checked.wait()
    await sv.worker.run()


async def follow_fleet(sv: Services) -> None:
    """Reload a fitted fusion (stored by `crossfade tune` or another replica) once a second;
    and with a shared state, every `state.poll_s`: take switches made through other replicas
    or the CLI (the pointer), catch the BM25 sidecars up, say this replica is alive. Alone
    (SQLite), nobody else switches."""
    rt = sv.rt
    shared = rt.state.shared
    every = sv.settings.state.poll_s if shared else 1.0
    fits, prunes = Every(1.0), Every(60.0)
    while True:
        if shared:
            await sv.control.follow()
        if sv.control.state_error is None:
            with suppress(Exception):  # a fit missed is read again next round
                if fits.stale():
                    fits.put(None)
                    sv.searcher.fitted = await asyncio.to_thread(
                        load_fit, rt.state, rt.fingerprints()
                    )
        if shared and sv.control.state_error is None:
            try:
                await asyncio.to_thread(sv.sidecars.catch_up)
            except Exception as e:  # an index down: the log keeps the ids, tried next round
                log.warning("BM25 sidecar catch-up: %s", e)
            with suppress(Exception):  # a beat missed is retried next round
                await asyncio.to_thread(rt.state.beat, sv.member, "serve", sv.worker.report())
                if prunes.stale():
                    prunes.put(None)
                    kept = sv.settings.state.changes_kept
                    await asyncio.to_thread(rt.state.prune_changes, kept)
        await asyncio.sleep(every)


async def watch_canaries(sv: Services, checked: asyncio.Event) -> None:
    """Re-embed each hosted model's canary at start-up and every `canary_interval_s` (the
    shortest of the hosted models'; 0 = at start-up only); `checked` is set after the first."""
    models = sv.settings.models
    hosted = [m for m in (models.old, models.new) if m.kind == "openai"]
    if not hosted:
        checked.set()
        return
    intervals = [m.canary_interval_s for m in hosted if m.canary_interval_s > 0]
    while True:
        try:
            sv.canary = await asyncio.to_thread(check_canaries, sv.rt)
        except Exception as e:  # a failed check is reported, never a crash
            sv.canary = {"error": str(e)}
        checked.set()
        if not intervals:
            return
        await asyncio.sleep(min(intervals))
