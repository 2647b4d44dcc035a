"""Write-ahead journal for document writes.

A write goes to two indexes (old and new, each with its own model); a process killed between
the two would leave them disagreeing, and a document present in one index only is lost at
cutover or rollback. So each batch is first recorded here (SQLite, WAL, fsync on commit), then
applied to every index, then cleared. At start-up, batches still recorded are applied again:
upserts and deletes are idempotent, so replaying a batch that had partly or wholly landed is
harmless, and a batch is either in every index or, if it never reached the journal, in none.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.migration.state import durable_sqlite

UPSERT = "upsert"
DELETE = "delete"


class WriteJournal:
    def __init__(self, path: str | Path) -> None:
        self._db = durable_sqlite(
            path,
            "CREATE TABLE IF NOT EXISTS pending (batch INTEGER PRIMARY KEY AUTOINCREMENT,"
            " op TEXT NOT NULL, body TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS failed (batch INTEGER PRIMARY KEY, op TEXT NOT NULL,"
            " body TEXT NOT NULL, error TEXT NOT NULL, at REAL NOT NULL)",
        )
        self._lock = threading.Lock()

    def begin(self, op: str, items: Sequence[Any]) -> int:
        """Record a batch durably before it touches any index; returns its id."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO pending (op, body) VALUES (?, ?)", (op, json.dumps(list(items)))
            )
            return int(cur.lastrowid or 0)

    def done(self, batch: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE batch = ?", (batch,))

    def fail(self, batch: int, error: str) -> None:
        """Set a batch aside that can never apply (an engine error that isn't an outage): kept
        for the operator, no longer replayed, so one bad batch can't block every later write."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO failed SELECT batch, op, body, ?, ? FROM pending"
                " WHERE batch = ?",
                (error, time.time(), batch),
            )
            self._db.execute("DELETE FROM pending WHERE batch = ?", (batch,))
            self._db.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        with self._lock:
            pending = self._db.execute("SELECT count(*) FROM pending").fetchone()[0]
            failed = self._db.execute("SELECT count(*) FROM failed").fetchone()[0]
        return {"pending": int(pending), "failed": int(failed)}

    def pending(self) -> list[tuple[int, str, list[Any]]]:
        """Batches begun but not done, oldest first (the order they were applied in)."""
        with self._lock:
            rows = self._db.execute("SELECT batch, op, body FROM pending ORDER BY batch").fetchall()
        return [(int(b), str(op), json.loads(body)) for b, op, body in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
