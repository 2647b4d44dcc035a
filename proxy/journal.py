"""Write-ahead journal for document writes.

A write goes to two indexes (old and new, each with its own model); a process killed between
the two would leave them disagreeing, and a document present in one index only is lost at
cutover or rollback. So each batch is first recorded here (SQLite, WAL, fsync on commit), then
applied to every index, then, once the indexes have been flushed to disk (`flush_writes`,
every `writes.flush_interval_s`), cleared. Upserts and deletes are idempotent, so applying a
batch again that had partly or wholly landed is harmless: a crash, even of the machine,
replays what the indexes may not have on disk.

A batch that one index refused (an outage, a full disk) stays here with the indexes it has
not reached yet and their vectors, and is retried with exponential backoff until every index
has it: never set aside. Later writes wait behind it (they are refused, applied nowhere,
until it lands), so two writes of one document can't land in opposite orders.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from proxy.sqlite import durable_sqlite

UPSERT = "upsert"
DELETE = "delete"


@dataclass(frozen=True)
class Batch:
    """A journaled batch not yet in every index."""

    batch: int
    op: str
    items: list[Any]
    begun_at: float
    attempts: int = 0
    next_at: float = 0.0
    error: str | None = None
    # After a failed attempt: the indexes it has not reached, with their vectors (upserts), so
    # a retry needs no model call; None: every live index (a crash cut it short).
    sides_left: list[str] | None = None
    vectors: dict[str, list[list[float]]] | None = None


class Journal(Protocol):
    """The write journal: SQLite here (`WriteJournal`), or a table of the fleet's shared state
    (proxy/state/postgres.py). Callers apply batches one at a time, in batch order (they hold
    the state's WRITES section)."""

    def begin(self, op: str, items: Sequence[Any]) -> int:
        """Record a batch durably before it touches any index; returns its id."""
        ...

    def applied(self, batch: int) -> None:
        """In every index (not yet flushed there: kept until `forget_applied`)."""
        ...

    def forget_applied(self) -> int:
        """The indexes were flushed: the batches applied before are on disk there."""
        ...

    def retry_later(
        self,
        batch: int,
        error: str,
        sides_left: Sequence[str],
        vectors: dict[str, list[list[float]]] | None = None,
    ) -> float:
        """Record a failed attempt: what is left to apply, and when to try again (backoff).
        Returns the seconds until then."""
        ...

    def pending(self, unflushed: bool = False) -> list[Batch]:
        """Batches begun but not in every index yet, oldest first (the order they apply in);
        `unflushed`: also those applied but maybe not on disk yet (a restart replays them)."""
        ...

    def status(self, now: float | None = None) -> dict[str, Any]:
        """`pending`, `retrying`, `oldest_age_s`, `max_attempts`, `next_retry_in_s`,
        `failing_batch`, `last_error`: what is not yet in every index."""
        ...

    def close(self) -> None: ...


def batch_of(row: Sequence[Any], body: list[Any], rest: dict[str, Any] | None) -> Batch:
    """A journal row (batch, op, _, begun_at, attempts, next_at, error, _) as a Batch, its
    body and its rest (sides left and their vectors) already decoded."""
    b, op, _, begun, attempts, next_at, error, _ = row
    left = rest or {}
    return Batch(
        int(b),
        str(op),
        body,
        float(begun),
        int(attempts),
        float(next_at),
        error,
        left.get("sides"),
        left.get("vectors"),
    )


def status_of(now: float, figures: Sequence[Any], last: Sequence[Any] | None) -> dict[str, Any]:
    """`Journal.status` from (count, retrying, oldest begun_at, max attempts, next retry) of
    the batches not yet applied, and (batch, error) of the first failing one."""
    n, retrying, oldest, attempts, next_at = figures
    return {
        "pending": int(n),
        "retrying": int(retrying or 0),
        "oldest_age_s": round(now - oldest, 1) if n else 0.0,
        "max_attempts": int(attempts or 0),
        "next_retry_in_s": round(max(0.0, next_at - now), 1) if retrying else None,
        "failing_batch": int(last[0]) if last else None,
        "last_error": last[1] if last else None,
    }


def backoff(base_s: float, max_s: float, attempts: int) -> float:
    """Seconds before the next try of a batch that failed `attempts` times."""
    return min(max_s, base_s * 2 ** (attempts - 1))


class WriteJournal:
    def __init__(
        self, path: str | Path, retry_base_s: float = 1.0, retry_max_s: float = 60.0
    ) -> None:
        self._db = durable_sqlite(
            path,
            "CREATE TABLE IF NOT EXISTS pending (batch INTEGER PRIMARY KEY AUTOINCREMENT,"
            " op TEXT NOT NULL, body TEXT NOT NULL)",
        )
        for column in (
            "begun_at REAL NOT NULL DEFAULT 0",
            "attempts INTEGER NOT NULL DEFAULT 0",
            "next_at REAL NOT NULL DEFAULT 0",
            "error TEXT",
            "rest TEXT",  # JSON: sides left and their vectors, after a failed attempt
            "applied INTEGER NOT NULL DEFAULT 0",  # in every index, not yet flushed
        ):
            with suppress(sqlite3.OperationalError):  # a journal of this version has it
                self._db.execute(f"ALTER TABLE pending ADD COLUMN {column}")
        self._adopt_failed()
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self._lock = threading.Lock()

    def _adopt_failed(self) -> None:
        """Batches an earlier version set aside as failing are retried like any other."""
        has = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'failed'"
        ).fetchone()
        if has:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR IGNORE INTO pending (batch, op, body, begun_at, error)"
                " SELECT batch, op, body, at, error FROM failed"
            )
            self._db.execute("DROP TABLE failed")
            self._db.execute("COMMIT")

    def begin(self, op: str, items: Sequence[Any]) -> int:
        """Record a batch durably before it touches any index; returns its id."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO pending (op, body, begun_at) VALUES (?, ?, ?)",
                (op, json.dumps(list(items)), time.time()),
            )
            return int(cur.lastrowid or 0)

    def applied(self, batch: int) -> None:
        """In every index (not yet flushed there: kept until `forget_applied`)."""
        with self._lock:
            self._db.execute("UPDATE pending SET applied = 1 WHERE batch = ?", (batch,))

    def forget_applied(self) -> int:
        """The indexes were flushed: the batches applied before are on disk there."""
        with self._lock:
            return int(self._db.execute("DELETE FROM pending WHERE applied = 1").rowcount)

    def retry_later(
        self,
        batch: int,
        error: str,
        sides_left: Sequence[str],
        vectors: dict[str, list[list[float]]] | None = None,
    ) -> float:
        """Record a failed attempt: what is left to apply, and when to try again (backoff).
        Returns the seconds until then."""
        with self._lock:
            row = self._db.execute(
                "SELECT attempts FROM pending WHERE batch = ?", (batch,)
            ).fetchone()
            attempts = int(row[0]) + 1 if row else 1
            wait = backoff(self.retry_base_s, self.retry_max_s, attempts)
            rest = json.dumps({"sides": list(sides_left), "vectors": vectors})
            self._db.execute(
                "UPDATE pending SET attempts = ?, next_at = ?, error = ?, rest = ? WHERE batch = ?",
                (attempts, time.time() + wait, error, rest, batch),
            )
        return wait

    def pending(self, unflushed: bool = False) -> list[Batch]:
        """Batches begun but not in every index yet, oldest first (the order they apply in);
        `unflushed`: also those applied but maybe not on disk yet (a restart replays them)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT batch, op, body, begun_at, attempts, next_at, error, rest FROM pending"
                + ("" if unflushed else " WHERE applied = 0")
                + " ORDER BY batch"
            ).fetchall()
        return [batch_of(r, json.loads(r[2]), json.loads(r[7]) if r[7] else None) for r in rows]

    def status(self, now: float | None = None) -> dict[str, Any]:
        """For `GET /migration`, `crossfade status` and /metrics: what is not yet in every
        index, and how its retries go."""
        now = time.time() if now is None else now
        with self._lock:
            figures = self._db.execute(
                "SELECT count(*), sum(attempts > 0), min(begun_at), max(attempts), min(next_at)"
                " FROM pending WHERE applied = 0"
            ).fetchone()
            last = self._db.execute(
                "SELECT batch, error FROM pending WHERE applied = 0 AND error IS NOT NULL"
                " ORDER BY batch LIMIT 1"
            ).fetchone()
        return status_of(now, figures, last)

    def close(self) -> None:
        with self._lock:
            self._db.close()
