"""The re-embed worker: takes queued documents (search hits first, then the backfill sweep),
embeds them with the new model and writes their vectors with a conditional update.

Budgeted so it cannot starve queries: after each batch it sleeps so that it spends at most
`cpu_share` of wall time working, and never exceeds `max_docs_per_s`; and it embeds at
background CPU priority (`nice`), so while queries keep the cores busy it gets only the
cycles they leave, and the whole budget when they are idle. Pausing stops it entirely (after
the batch in flight); `until` stops only the backfill sweep.

A hosted model (kind: openai) is called with several requests in flight (its
`max_concurrent_requests`, each of `batch_size` texts): a worker batch is that many requests,
and each request's documents are written (and taken off the queue) as soon as it answers. A
request that still fails after its retries leaves its documents in the queue, reported, to be
tried again; none is written twice. The CPU budget does not apply to it (its time is spent
waiting on the network), the API's rate limits and `max_docs_per_s` do. Every request's
billed tokens add to the migration's spend; at `max_spend` the worker stops, and a vector
write naming a model whose canary drifted is refused, so the worker stops then too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from proxy.clock import now_iso
from proxy.config import MigrationConfig
from proxy.document import Doc, doc_of
from proxy.migration.canary import drift_message
from proxy.migration.spend import add_spend, spend_status
from proxy.model import Embedded, Embedder, ModelUnavailable
from proxy.point import make_point
from proxy.runtime import Runtime
from proxy.state import BACKFILL, StateStore
from proxy.store import IndexUnavailable
from proxy.threads import lower_priority

log = logging.getLogger("crossfade.worker")


@dataclass
class Stats:
    processed: int = 0
    skipped: int = 0
    batches: int = 0
    busy: bool = False  # a batch in flight (a pause waits for it)
    # running | paused (and no batch in flight) | idle (nothing queued) | waiting (index or
    # model down) | capped (spend cap) | blocked (the new model's canary drifted)
    state: str = "starting"
    last_error: str | None = None
    failed_requests: int = 0  # hosted: requests that failed after their retries
    window_s: float = 60.0
    events: deque[tuple[float, int]] = field(default_factory=deque)

    def record(self, written: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.events.append((now, written))
        while self.events and self.events[0][0] < now - self.window_s:
            self.events.popleft()

    def resume(self) -> None:
        """A pause seen to be over: said before the next batch starts. Left as it was until
        the batch ended, a worker deep in its first batch after a resume reported itself
        paused, and a pause that followed looked done while that batch still wrote."""
        if self.state == "paused":
            self.state = "running"

    def rate(self, now: float | None = None) -> float:
        """Documents re-embedded per second of wall time (sleeps included) over the window."""
        now = time.monotonic() if now is None else now
        recent = [(t, n) for t, n in self.events if t >= now - self.window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0][0], 1e-6)
        return sum(n for _, n in recent[1:]) / span


def control_state(state: StateStore, cfg: MigrationConfig) -> dict[str, Any]:
    """Pause flag, lazy and backfill switches, backfill limit: persisted in the migration
    state (so a restart honours them), the config supplying defaults."""
    return {
        "paused": bool(state.get("paused", False)),
        "lazy": bool(state.get("lazy", cfg.lazy)),
        "backfill": bool(state.get("backfill", cfg.backfill)),
        "until": float(state.get("until", cfg.until)),
        "max_spend": float(state.get("max_spend", cfg.max_spend)),
    }


def set_control(
    state: StateStore,
    action: str | None = None,
    backfill: bool | None = None,
    until: float | None = None,
    lazy: bool | None = None,
    max_spend: float | None = None,
) -> None:
    if max_spend is not None:
        state.set("max_spend", max_spend)
    if lazy is not None:
        state.set("lazy", lazy)
    if action is not None:
        state.set("paused", action == "pause")
    if backfill is not None:
        state.set("backfill", backfill)
    if until is not None:
        state.set("until", until)


def background_inference(threads: int, nice: int) -> None:
    """Set up the calling thread to embed in the background: cap torch's intra-op threads for
    this thread only (OpenMP keeps the setting per thread, so the query threads keep theirs),
    and lower its CPU priority (Linux schedules threads apart; the OpenMP team it starts
    inherits the value)."""
    import torch

    torch.set_num_threads(threads)
    lower_priority(nice)


class Reembedder:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.settings.migration
        self.state: StateStore = rt.state
        self.stats = Stats()
        # A batch's reads and writes run on one thread at normal priority: the engine may hold
        # the GIL in a call, and a starved thread holding it would stall the event loop.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="reembed")
        # Its inference on another, always the same one (one OpenMP team), apart from the
        # query threads: `migration.threads` intra-op threads at `migration.nice`, so a batch
        # of documents never holds cores that queries want.
        self.inference = ThreadPoolExecutor(
            1,
            thread_name_prefix="reembed-infer",
            initializer=background_inference,
            initargs=(self.cfg.threads, self.cfg.nice),
        )
        # A hosted model's requests: several in flight (bounded again inside the adapter).
        self.requests = ThreadPoolExecutor(64, thread_name_prefix="reembed-request")

    def report(self) -> dict[str, Any]:
        """What this worker says of itself: in the status, and in its fleet heartbeat."""
        s = self.stats
        return {
            "state": s.state,
            "processed": s.processed,
            "skipped": s.skipped,
            "batches": s.batches,
            "busy": s.busy,
            "rate_docs_per_s": round(s.rate(), 2) if s.state == "running" else 0.0,
            "last_error": s.last_error,
            "failed_requests": s.failed_requests,
        }

    def refill(self) -> int:
        """Enqueue the next documents of the sweep if the queue runs low and backfill may run."""
        ctl = control_state(self.state, self.cfg)
        if not ctl["backfill"]:
            return 0
        if self.state.depth()["total"] >= self.cfg.batch_size:
            return 0
        new = self.rt.store("new")
        until = float(ctl["until"])
        if until < 100.0:  # only a limited sweep needs the coverage (two counts)
            total = new.count()
            if total == 0 or 100.0 * new.count(dense_only=True) / total >= until:
                return 0
        # At 100% the sweep finds nothing: an idle worker pays one small scroll, not counts.
        sweep = max(self.cfg.batch_size * 4, self.cfg.sort_window)
        return self.state.enqueue(new.without_dense(sweep), BACKFILL)

    def blocked(self) -> str | None:
        """Why the worker may not re-embed now (spend cap, drifted model), or None."""
        alarm = self.rt.model_drift().get("new")
        if alarm:
            self.stats.state = "blocked"
            return drift_message("new", alarm)
        cap = control_state(self.state, self.cfg)["max_spend"]
        spend = spend_status(self.state, self.rt.settings, cap)
        if spend["capped"]:
            self.stats.state = "capped"
            return f"spend cap reached: {spend['cost']:g} of max_spend {cap:g}"
        if self.stats.state in ("capped", "blocked"):
            self.stats.state = "idle"
        return None

    def step(self) -> int:
        """Process one batch; returns documents written (blocking: run it in a thread)."""
        new = self.rt.store("new")
        if new.info() is None:
            return 0
        if self.blocked():
            return 0
        ids = self.state.claim(self.window(), self.cfg.lease_s)
        if not ids and self.refill():
            ids = self.state.claim(self.window(), self.cfg.lease_s)
        if not ids:
            return 0
        return self.reembed(ids)

    def window(self) -> int:
        """How many documents one batch claims: a hosted model's requests in flight, or a
        local model's window sorted by length."""
        model = self.rt.model("new")
        if model.hosted:
            return max(self.cfg.batch_size, model.request_batch * model.max_in_flight)
        return max(self.cfg.batch_size, self.cfg.sort_window)

    def reembed(self, ids: list[str]) -> int:
        """Re-embed documents the caller holds (claimed, leased): one batch of `crossfade
        worker` and of a Ray actor (proxy/migration/ray_backfill.py) alike. Skips those
        already migrated or gone; embeds the rest; writes each chunk conditionally under the
        fleet's write lock; takes them off the queue, counts them (duplicates) and their spend.
        Returns documents written. Every id leaves the queue or goes back to it, released."""
        new = self.rt.store("new")
        model = self.rt.model("new")
        # A hosted model: requests of the API's batch size, several in flight; a local one:
        # the window sorted by length, embedded `batch_size` at a time, in order.
        per_request = model.request_batch if model.hosted else self.cfg.batch_size
        payloads = new.retrieve(ids, ["text", "metadata", "text_sha256"])
        have = new.with_dense(list(payloads))
        # Deleted since enqueued, or already migrated (by a write or another worker): done.
        left = [d for d in ids if d in payloads and d not in have]
        # No text to embed them from: listed (status, the gate), never a batch stalled.
        self.state.mark_unembeddable(
            [(d, new.why_no_text(d)) for d in left if not isinstance(payloads[d].get("text"), str)]
        )
        todo = [doc_of(payloads[d]) for d in left if isinstance(payloads[d].get("text"), str)]
        if not model.hosted:
            # Each batch pads to its own longest text: similar lengths together waste little.
            todo.sort(key=lambda d: len(d.text))
        chunks = [todo[i : i + per_request] for i in range(0, len(todo), per_request)]
        written, failed, errors, handled = 0, set(), [], set()
        for chunk, job in self._embedding(model, chunks):
            handled.update(d.doc_id for d in chunk)
            try:
                out = job.result()
            except ModelUnavailable as e:  # its documents stay queued, tried again later
                failed.update(d.doc_id for d in chunk)
                errors.append(e)
                continue
            stamp = now_iso()
            points = [
                make_point(self.rt, "new", d, out.vectors[i], stamp, conditional=True)
                for i, d in enumerate(chunk)
            ]
            # Conditional: refused if the text changed while we embedded, never a stale vector;
            # under the write lock, so that no document write lands between check and write.
            with self.rt.writing():
                new.upsert(points)
                self.rt.unflushed = True  # on disk at the next flush_writes
            # Off the queue as soon as written: a later failure in this batch can't redo them.
            self.state.done([d.doc_id for d in chunk])
            self.state.record_reembedded([d.doc_id for d in chunk])
            if model.hosted:
                add_spend(self.state, out.tokens)
            written += len(chunk)
            # A pause acts between a local model's batches, not after a whole window.
            if not model.hosted and control_state(self.state, self.cfg)["paused"]:
                break
        put_back = {d.doc_id for d in todo} - handled  # not embedded: back to the queue
        self.state.done([d for d in ids if d not in failed and d not in put_back])
        if put_back:
            self.state.release(sorted(put_back))
        if failed:
            self.state.release(sorted(failed))
            self.stats.failed_requests += len(errors)
            self.stats.last_error = f"{errors[0]}; {len(failed)} documents stay queued"
            log.warning("re-embed request(s) failed: %s", self.stats.last_error)
            if not written:
                raise errors[0]
        self.stats.processed += written
        self.stats.skipped += len(ids) - written - len(failed) - len(put_back)
        self.stats.batches += 1
        return written

    def _embedding(
        self, model: Embedder, chunks: list[list[Doc]]
    ) -> Iterator[tuple[list[Doc], Future[Embedded]]]:
        """Each chunk with its embedding job: a hosted model's requests all in flight at once
        (yielded as they finish), a local model's batches one after another (the next
        submitted only when the caller comes back for it, so it can stop between batches)."""
        if model.hosted:
            jobs = {
                self.requests.submit(model.embed_billed, [d.text for d in c]): c for c in chunks
            }
            for job in as_completed(jobs):
                yield jobs[job], job
            return
        for c in chunks:
            yield c, self.inference.submit(model.embed_billed, [d.text for d in c])

    def sleep_after(self, written: int, busy_s: float) -> float:
        """Seconds to rest after a batch that took `busy_s`, to honour the budget (the CPU
        share binds a local model only: a hosted one spends its time waiting)."""
        hosted = self.rt.model("new").hosted
        rest = 0.0 if hosted else busy_s * (1.0 / self.cfg.cpu_share - 1.0)
        if self.cfg.max_docs_per_s > 0:
            rest = max(rest, written / self.cfg.max_docs_per_s - busy_s)
        return rest

    async def run(self, idle_s: float = 0.5, down_s: float = 5.0) -> None:
        """Forever: a failed batch is logged and retried later, never the end of the worker
        (an unreachable index is waited out: one warning, then a retry every `down_s`)."""
        waiting: str | None = None  # the unreachable index being waited out
        while True:
            if control_state(self.state, self.cfg)["paused"]:
                # The rate after a resume is measured afresh, not averaged over the pause.
                self.stats.events.clear()
                self.stats.state = "paused"
                await asyncio.sleep(idle_s)
                continue
            self.stats.resume()
            t0 = time.monotonic()
            self.stats.busy = True
            try:
                loop = asyncio.get_running_loop()
                written = await loop.run_in_executor(self.executor, self.step)
            except IndexUnavailable as e:  # claimed ids come back when their lease ends
                if waiting != str(e):
                    log.warning("re-embedding waits: %s", e)
                waiting = self.stats.last_error = str(e)
                self.stats.state = "waiting"
                await asyncio.sleep(down_s)
                continue
            except ModelUnavailable as e:  # its documents are back in the queue
                self.stats.state = "waiting"
                self.stats.last_error = str(e)
                await asyncio.sleep(down_s)
                continue
            except Exception as e:  # keep serving; the queue still holds the batch (lease)
                log.exception("re-embed batch failed")
                self.stats.last_error = str(e)
                await asyncio.sleep(idle_s * 4)
                continue
            finally:
                self.stats.busy = False
            took = time.monotonic() - t0
            if waiting is not None:
                log.warning("re-embedding resumes: the index answers again")
                waiting = self.stats.last_error = None
            if written or self.stats.state not in ("capped", "blocked"):
                self.stats.state = "running" if written else "idle"
            if written:
                self.stats.record(written)
                await asyncio.sleep(self.sleep_after(written, took))
            else:
                await asyncio.sleep(idle_s)


async def work(rt: Runtime, beat_s: float = 1.0) -> None:
    """`crossfade worker`: re-embed from the fleet's shared queue until cancelled. A hosted
    new model's canary is checked first (a model that changed under its name must not write
    a vector); the worker reports itself in the fleet's heartbeats (`crossfade status`)."""
    from proxy.migration.canary import check_canaries

    worker = Reembedder(rt)
    name = f"worker {socket.gethostname()} pid {os.getpid()}"
    if rt.settings.models.new.kind == "openai":
        log.info("canary: %s", await asyncio.to_thread(check_canaries, rt))

    async def beat() -> None:
        while True:
            try:
                await asyncio.to_thread(rt.state.beat, name, "worker", worker.report())
            except Exception as e:  # the state store down: the worker's claims fail too
                log.warning("heartbeat: %s", e)
            await asyncio.sleep(beat_s)

    beating = asyncio.create_task(beat())
    try:
        await worker.run()
    finally:
        beating.cancel()
        worker.executor.shutdown(wait=True)
