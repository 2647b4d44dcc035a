"""The migration's durable state, behind one protocol with two implementations.

Everything a migration must not lose and every process of a fleet must agree on lives here:
the serving pointer, the switches (pause, lazy, backfill, limits), the re-embed queue and its
leases, documents that can't be re-embedded, the write journal, spend and re-embed counts, the
audit log, fitted fusion, canaries, bindings of adopted collections, the change log replicas
follow, and who in the fleet is alive.

- `SqliteState` (proxy/state/sqlite.py): one process; files under `data_dir` (SQLite in WAL
  mode, fsync on commit; the pointer and the audit log as files).
- `PostgresState` (proxy/state/postgres.py): `state.url: postgresql://...`, shared by every
  replica and worker: transactions, `FOR UPDATE SKIP LOCKED` claims, advisory locks for the
  sections that must run one at a time fleet-wide.

The queue is an accelerator, never the source of truth: "migrated" means the new index holds a
vector of the document's current text, and a sweep can always recompute what is left. So a
lost queue costs time, never data. Claims carry a lease: an item claimed by a worker that dies
comes back once its lease expires.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.errors import Unavailable
from proxy.journal import Journal
from proxy.routing import Routing

HIT = 0  # returned by a search: re-embed first
BACKFILL = 1  # found by the background sweep

# Sections that run one at a time, fleet-wide with a shared state (`StateStore.exclusive`).
WRITES = "writes"  # document writes and re-embed writes: one batch at a time, in journal order
CONTROL = "control"  # switches of the serving pointer
PRUNED = "changes:pruned_through"  # (a record) the last sequence number pruned from the log


class StateUnavailable(Unavailable, RuntimeError):
    """The state store can't be reached: serve the last known generation, marked degraded;
    refuse control changes and writes (never act on a stale view)."""


@dataclass(frozen=True)
class Pointer:
    """The serving pointer: what serves now, and what a rollback restores (None: no cutover
    to undo)."""

    routing: Routing
    rollback_to: Routing | None = None


@dataclass(frozen=True)
class Changes:
    """Documents written since a sequence number, and the sequence to ask from next.
    `complete`: False when the log was pruned past the number asked from (changes are lost
    to that reader: it must rebuild what it derives from the log)."""

    doc_ids: list[str]
    seq: int
    complete: bool = True


@dataclass(frozen=True)
class Member:
    """A process of the fleet, as it last reported itself."""

    name: str  # e.g. "serve 127.0.0.1:8001 pid 123", "worker host pid 456"
    role: str  # serve | worker | cli
    age_s: float  # since its last heartbeat
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reembedded:
    """Re-embeds done in this migration: `total` embeddings, `distinct` documents (the rest
    are documents embedded more than once)."""

    total: int
    distinct: int

    @property
    def duplicates(self) -> int:
        return self.total - self.distinct


class StateStore(Protocol):
    shared: bool  # several processes share it (a fleet): their views must be refreshed
    where: str  # for reports: a path, or the PostgreSQL host and database (never a password)

    @property
    def journal(self) -> Journal: ...

    def ping(self) -> None:
        """Raises StateUnavailable if the store can't be reached."""
        ...

    # --- the re-embed queue ---------------------------------------------------------------
    def enqueue(self, doc_ids: Sequence[str], priority: int) -> int:
        """Add ids; one already queued keeps its place, moving up if this priority is higher.
        Returns how many were new."""
        ...

    def claim(self, n: int, lease_s: float) -> list[str]:
        """Up to `n` ids nobody holds, hits first; held by the caller for `lease_s`."""
        ...

    def claim_ids(self, doc_ids: Sequence[str], lease_s: float) -> list[str]:
        """Those of `doc_ids` nobody holds, held by the caller for `lease_s` (a Ray batch's
        partition: named ids, not the queue's next ones). An id not queued is queued (as
        BACKFILL) and held in the same step; one another process holds is left to it."""
        ...

    def done(self, doc_ids: Sequence[str]) -> None: ...

    def release(self, doc_ids: Sequence[str]) -> None:
        """Claimed ids back to the queue now, not when their lease ends (a failed batch)."""
        ...

    def depth(self) -> dict[str, int]: ...

    def clear_queue(self) -> None: ...

    # --- switches and records (JSON values by key) ----------------------------------------
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None:
        """Forget `key`: `get` answers its default (for a switch, the config's value) again."""
        ...

    # --- counters (atomic across the fleet) ------------------------------------------------
    def add_counts(self, key: str, deltas: dict[str, float]) -> dict[str, float]:
        """Add `deltas` to the counters under `key` in one step; returns their new values."""
        ...

    def counts(self, key: str) -> dict[str, float]: ...

    def record_reembedded(self, doc_ids: Sequence[str]) -> None:
        """Documents the re-embed worker embedded (a document twice: a duplicate)."""
        ...

    def reembedded(self) -> Reembedded: ...

    def reset_reembedded(self) -> None:
        """A new migration counts from zero."""
        ...

    # --- documents that can't be re-embedded ----------------------------------------------
    def mark_unembeddable(self, items: Sequence[tuple[str, str]]) -> None:
        """(doc id, why) of documents that cannot be re-embedded (no text): counted and
        listed until given text or excluded. The new index counts none of them (they were
        never seeded into it), so coverage counts them as missing."""
        ...

    def forget_unembeddable(self, doc_ids: Sequence[str]) -> None:
        """Documents written (with text) or deleted since: they count as any other again."""
        ...

    def exclude(self, doc_ids: Sequence[str], actor: str) -> list[str]:
        """An operator's decision to migrate without these documents; returns the ids that were
        listed (the others are not excluded)."""
        ...

    def unembeddable(self, shown: int = 20) -> dict[str, Any]:
        """`count` (not excluded: they block the gate and count as missing in coverage),
        `excluded`, and the first `shown` with why (`ids`: [{doc_id, why}])."""
        ...

    def unembeddable_ids(self) -> set[str]: ...

    # --- the serving pointer and the audit log -------------------------------------------
    def pointer(self) -> Pointer | None:
        """None before the first switch (the config's mode and split serve)."""
        ...

    def save_pointer(self, pointer: Pointer) -> None:
        """Durably, whole or not at all (callers hold `exclusive(CONTROL)`)."""
        ...

    def audit_append(self, entry: dict[str, Any]) -> None: ...

    def audit_tail(self, n: int | None = 50) -> list[dict[str, Any]]:
        """The last `n` entries, oldest first (None: every entry)."""
        ...

    # --- one at a time, fleet-wide ---------------------------------------------------------
    def exclusive(self, section: str) -> AbstractContextManager[None]:
        """Held by one thread of one process of the fleet at a time (WRITES, CONTROL)."""
        ...

    # --- the change log: documents written, for replicas' derived indexes (BM25 sidecars) --
    def log_changes(self, doc_ids: Sequence[str]) -> None: ...

    def changes_since(self, seq: int, limit: int = 10_000) -> Changes: ...

    def prune_changes(self, keep: int) -> int:
        """Delete all but the last `keep` changes (a reader further behind gets `complete`
        False); how many were deleted."""
        ...

    # --- the fleet -------------------------------------------------------------------------
    def beat(self, name: str, role: str, info: dict[str, Any]) -> None:
        """This process is alive (and what it reports: state, rate, processed)."""
        ...

    def members(self, max_age_s: float = 30.0) -> list[Member]:
        """Processes that beat within `max_age_s`, newest first."""
        ...

    def close(self) -> None: ...
