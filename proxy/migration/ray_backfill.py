"""`crossfade backfill --ray ADDRESS`: the re-embedding as a Ray Data job on an existing Ray
cluster, for backfills too big for a few `crossfade worker` processes.

The driver (this process) reads the pending documents from the store (the new index's
documents without a new vector, `ROUND` at a time), and hands their ids to Ray Data as
partitions of one batch each. `map_batches` runs them through `ReembedBatch`, a class-based
UDF held by a pool of `actors` actors (`num_gpus=1` each where the cluster has GPUs). Each
actor builds a `Runtime` from the same settings and runs one batch exactly as `crossfade
worker` does (`Reembedder.reembed`): so the guarantees are the worker's, not new ones:

- the partition's ids are claimed in the shared state with a lease (`StateStore.claim_ids`):
  a worker and an actor never embed the same document at once; ids someone else holds are
  left to it (counted as `held`, picked up by a later round if still pending);
- documents already migrated (by a write, a worker, an earlier attempt) are skipped;
- each chunk is written with a text-hash condition under the fleet's write lock, then taken
  off the queue and counted (`record_reembedded`: duplicates show in `crossfade status`), its
  tokens added to the spend. A process killed while its write is in flight may leave that
  chunk (one at most) written but uncounted, still queued under its lease: the index is the
  truth (coverage, `verify`), the count errs low, never high.

When no document is pending, the driver clears what dead processes left queued: it waits up
to a lease for their leases to end, then takes the migrated (or deleted) documents off the
queue (`left_queued` in its answer: what it could not clear).

Pause (and `backfill off`, a spend cap, a drifted model), read from the shared state before
each batch, stops the job after the batches in flight: the actors return the partitions
left untouched, at once, so the job ends by itself, and the driver starts no other round.
Actors beat like workers (`fleet` in `crossfade status --json`, their rate in the fleet's).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from proxy.config import ConfigError, Settings
from proxy.migration.worker import Reembedder, control_state
from proxy.model import ModelUnavailable
from proxy.runtime import Runtime
from proxy.store import IndexUnavailable, VectorStore

log = logging.getLogger("crossfade.ray")

RAY_MISSING = (
    "`crossfade backfill --ray` needs Ray on this machine and the cluster: "
    "pip install 'crossfade[ray]'"
)
ROUND = 100_000  # pending ids read from the store per Ray job (a round)
KEYS = ("written", "skipped", "held", "failed", "stopped")
SAY_S = 5.0  # a progress line at most this often
MAX_IDLE_ROUNDS = 20  # rounds in a row that wrote nothing: give up, saying why


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the extra: ray[data])
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def why_stop(rt: Any, worker: Reembedder) -> str | None:
    """Why no batch may start now (read from the shared state), or None."""
    ctl = control_state(rt.state, rt.settings.migration)
    if ctl["paused"]:
        return "paused"
    if not ctl["backfill"]:
        return "backfill off"
    return worker.blocked()  # the spend cap, a drifted model


class ReembedBatch:
    """The UDF of `map_batches`, one instance per actor: a `Runtime` and a `Reembedder` built
    once, a heartbeat thread, then one call per partition."""

    def __init__(self, settings: Settings, beat_s: float = 1.0) -> None:
        self.rt = Runtime(settings)
        self.rt.model("new")  # a model that can't load fails the actor here, named
        self.worker = Reembedder(self.rt)
        self.lease_s = settings.migration.lease_s
        self.name = f"ray actor {socket.gethostname()} pid {os.getpid()}"
        self._beat_s = beat_s
        threading.Thread(target=self._beat, daemon=True, name="crossfade-beat").start()

    def _beat(self) -> None:
        while True:
            try:
                self.rt.state.beat(self.name, "worker", self.worker.report())
            except Exception as e:  # the state store down: the claims fail too
                log.warning("heartbeat: %s", e)
            time.sleep(self._beat_s)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(d) for d in batch["doc_id"]]
        out = dict.fromkeys(KEYS, 0)
        stats = self.worker.stats
        reason = why_stop(self.rt, self.worker)
        if reason is not None:  # the partition goes back untouched; the driver stops
            if reason in ("paused", "backfill off"):  # (blocked() named the cap or drift)
                stats.state = "paused" if reason == "paused" else "idle"
            out["stopped"] = len(ids)
            return {k: np.array([v]) for k, v in out.items()}
        stats.resume()
        # A retried task (Ray retries a task whose actor died, and re-runs one whose output
        # was lost) must not write twice, and does not: its ids are claimed again first
        # (those the failed attempt still holds by lease are left alone: `held`, taken by a
        # later round once the lease ends), and what an earlier attempt already wrote is
        # skipped as migrated (`with_dense`) before anything is embedded. So a retry costs
        # a claim and a lookup, never a second write or a second bill; and every write is
        # conditional on the document's text hash under the fleet's write lock anyway.
        held = self.rt.state.claim_ids(ids, self.lease_s)
        out["held"] = len(ids) - len(held)
        if held:
            stats.busy = True
            try:
                written = self.worker.reembed(held)
                stats.state = "running"
                stats.record(written)
            except (ModelUnavailable, IndexUnavailable) as e:
                # reembed released a failed request's ids; an unreachable index's come back
                # when their lease ends. The next round tries them again.
                stats.state, stats.last_error = "waiting", str(e)
                out["failed"] = len(held)
                written = 0
            finally:
                stats.busy = False
            out["written"] = written
            out["skipped"] = len(held) - written - out["failed"]
        return {k: np.array([v]) for k, v in out.items()}


class Steady:
    """Documents/s from the first batch's answer to the last one's: the actors' throughput,
    without their start-up (model loads) or the driver's reads."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def see(self, written: int) -> None:
        now = (time.monotonic(), written)
        if self.first is None:
            self.first = now
        self.last = now

    def rate(self) -> float:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return 0.0
        return round((self.last[1] - self.first[1]) / (self.last[0] - self.first[0]), 2)


def _progress(totals: Counter[str], pending: int, t0: float) -> dict[str, Any]:
    took = max(time.monotonic() - t0, 1e-6)
    return {
        "ray": {
            **{k: totals[k] for k in KEYS},
            "round_pending": pending,
            "docs_per_s": round(totals["written"] / took, 2),
        }
    }


def clear_dead_claims(rt: Runtime, new: VectorStore, lease_s: float) -> int:
    """Queue entries left by processes that died holding them (their documents written, or
    deleted, by then): waited for up to a lease, taken off the queue if migrated or gone.
    One not migrated is released to whoever re-embeds next. Returns the entries left."""
    deadline = time.monotonic() + lease_s + 2.0
    while True:
        ids = rt.state.claim(1000, lease_s)
        present = new.retrieve(ids, ["text_sha256"]) if ids else {}
        migrated = new.with_dense(list(present)) if present else set()
        rt.state.done([d for d in ids if d not in present or d in migrated])
        pending = [d for d in present if d not in migrated]
        rt.state.release(pending)
        left = rt.state.depth()["total"]
        if not left or pending or time.monotonic() >= deadline:
            return left
        if not ids:
            time.sleep(1.0)


def _coverage(new: Any) -> float:
    total = new.count()
    return round(new.count(dense_only=True) / total, 4) if total else 0.0


def backfill_on_ray(
    settings: Settings,
    address: str,
    actors: int = 2,
    say: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the backfill on the Ray cluster at `address` until no document is pending, or a
    pause (or backfill off, the spend cap, a drifted model) stops it. Returns the totals."""
    if settings.state.url is None:
        raise ConfigError(
            "state.url: `crossfade backfill --ray` shares the migration's queue and leases "
            "with the fleet through PostgreSQL (state.url); Ray actors on other machines "
            "can't share a SQLite file"
        )
    if actors < 1:
        raise ValueError("--actors must be 1 or more")
    ray = import_ray()
    say = say or (lambda _: None)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus and actors > gpus:  # an actor per GPU: more would wait for one forever
            log.warning("--actors %d on %d GPUs: %d actors", actors, gpus, gpus)
            actors = gpus
        return _rounds(ray, Runtime(settings), settings, address, actors, gpus, say)
    finally:
        ray.shutdown()


def _rounds(
    ray: Any,
    rt: Any,
    settings: Settings,
    address: str,
    actors: int,
    gpus: int,
    say: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    cfg = settings.migration
    partition = max(cfg.batch_size, cfg.sort_window)
    name = f"ray backfill {socket.gethostname()} pid {os.getpid()}"
    totals: Counter[str] = Counter()
    t0 = time.monotonic()
    stopped: str | None = None
    idle = jobs_failed = 0
    steady = Steady()
    worker = Reembedder(rt)  # the driver's own checks (cap, drift); it embeds nothing
    with rt:
        new = rt.store("new")
        if new.info() is None:
            raise ConfigError("no new index: start the migration first (crossfade migrate start)")
        while True:
            stopped = why_stop(rt, worker)
            if stopped:
                break
            skip = rt.state.unembeddable_ids()
            pending = [d for d in new.without_dense(ROUND + len(skip)) if d not in skip]
            if not pending:
                break
            ds = ray.data.from_items(
                [{"doc_id": d} for d in pending],
                override_num_blocks=max(1, min(len(pending) // partition, actors * 8)),
            ).map_batches(
                ReembedBatch,
                fn_constructor_kwargs={"settings": settings},
                batch_size=partition,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=1 if gpus else 0,
            )
            got: Counter[str] = Counter()
            rows = iter(ds.iter_rows())
            last_said = time.monotonic()
            try:
                for row in rows:
                    got.update({k: int(row[k]) for k in KEYS})
                    if row["written"]:  # (a partition returned at a pause is no work)
                        steady.see(totals["written"] + got["written"])
                    # A pause is not a break: the actors answer every partition left
                    # untouched (`stopped`) at once, so the batches in flight finish and
                    # write, and the job ends by itself (breaking would kill them mid-batch).
                    doing = "stopping" if got["stopped"] else "running"
                    rt.state.beat(name, "ray", {"state": doing, **(totals + got)})
                    if time.monotonic() - last_said >= SAY_S:
                        last_said = time.monotonic()
                        say(_progress(totals + got, len(pending), t0))
            except Exception as e:  # a job that failed: its claims end with their leases
                log.warning("Ray job failed, starting another round: %s", e)
                jobs_failed += 1
            finally:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()  # a failed job's actors go now, not when it is collected
            totals += got
            say(_progress(totals, len(pending), t0))
            if got["written"]:
                idle = 0
                continue
            idle += 1
            if idle >= MAX_IDLE_ROUNDS and not got["stopped"]:
                stopped = f"no progress in {idle} rounds ({dict(got)})"
                break
            # Others hold them (leases), or a model or index is down: wait a little.
            time.sleep(min(cfg.lease_s, 2.0) if got["held"] else 1.0)
        left = (
            clear_dead_claims(rt, new, cfg.lease_s)
            if stopped is None
            else rt.state.depth()["total"]
        )
        took = time.monotonic() - t0
        out = {
            "ray": address,
            "actors": actors,
            "gpus_per_actor": 1 if gpus else 0,
            **{k: totals[k] for k in KEYS},
            "jobs_failed": jobs_failed,
            "seconds": round(took, 2),
            "docs_per_s": round(totals["written"] / took, 2) if took > 0 else 0.0,
            "steady_docs_per_s": steady.rate(),
            "coverage": _coverage(new),
            "left_queued": left,
            "stopped": stopped,
        }
        rt.state.beat(name, "ray", {"state": stopped or "done", **{k: totals[k] for k in KEYS}})
    return {"backfill": out}


def say_stderr(obj: dict[str, Any]) -> None:
    import orjson

    sys.stderr.write(orjson.dumps(obj).decode() + "\n")
