"""Migration state and the re-embed queue, behind one small interface.

The queue is an accelerator, never the source of truth: "migrated" means the new index holds a
vector of the document's current text, and a sweep of the new index can always recompute what
is left. So a lost queue costs time, never data.

This is the embedded engine's implementation (SQLite in WAL mode under the data directory,
fsync on commit, so a `kill -9` loses nothing acknowledged). Replicas sharing a Qdrant server
need the same interface kept in the store; claims carry a lease for that reason: an item
claimed by a worker that dies comes back once its lease expires.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from proxy.sqlite import durable_sqlite

HIT = 0  # returned by a search: re-embed first
BACKFILL = 1  # found by the background sweep


class MigrationState(Protocol):
    def enqueue(self, doc_ids: Sequence[str], priority: int) -> int: ...

    def claim(self, n: int, lease_s: float) -> list[str]: ...

    def done(self, doc_ids: Sequence[str]) -> None: ...

    def release(self, doc_ids: Sequence[str]) -> None: ...

    def depth(self) -> dict[str, int]: ...

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

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

    def unembeddable(self, shown: int = 20) -> dict[str, Any]: ...

    def unembeddable_ids(self) -> set[str]: ...


class SqliteState:
    def __init__(self, path: str | Path) -> None:
        self._db = durable_sqlite(
            path,
            "CREATE TABLE IF NOT EXISTS queue (doc_id TEXT PRIMARY KEY, priority INTEGER,"
            " enqueued_at REAL, leased_until REAL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS queue_order ON queue (priority, enqueued_at)",
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)",
            "CREATE TABLE IF NOT EXISTS unembeddable (doc_id TEXT PRIMARY KEY, why TEXT NOT NULL,"
            " at REAL NOT NULL, excluded_by TEXT)",
        )
        self._lock = threading.Lock()

    def enqueue(self, doc_ids: Sequence[str], priority: int) -> int:
        """Add ids; an id already queued keeps its place, moving up if this priority is higher.
        Returns how many were new."""
        if not doc_ids:
            return 0
        now = time.time()
        with self._lock:
            before = self._count()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO queue (doc_id, priority, enqueued_at) VALUES (?, ?, ?)"
                " ON CONFLICT(doc_id) DO UPDATE SET priority = min(priority, excluded.priority)",
                [(d, priority, now) for d in dict.fromkeys(doc_ids)],
            )
            self._db.execute("COMMIT")
            return self._count() - before

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM queue").fetchone()[0])

    def claim(self, n: int, lease_s: float) -> list[str]:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.execute(
                "SELECT doc_id FROM queue WHERE leased_until < ? ORDER BY priority, enqueued_at"
                " LIMIT ?",
                (now, n),
            ).fetchall()
            ids = [r[0] for r in rows]
            self._db.executemany(
                "UPDATE queue SET leased_until = ? WHERE doc_id = ?",
                [(now + lease_s, d) for d in ids],
            )
            self._db.execute("COMMIT")
            return ids

    def done(self, doc_ids: Sequence[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM queue WHERE doc_id = ?", [(d,) for d in doc_ids])
            self._db.execute("COMMIT")

    def release(self, doc_ids: Sequence[str]) -> None:
        """Claimed ids back to the queue now, not when their lease ends (a failed batch)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE queue SET leased_until = 0 WHERE doc_id = ?", [(d,) for d in doc_ids]
            )
            self._db.execute("COMMIT")

    def depth(self) -> dict[str, int]:
        with self._lock:
            rows = dict(self._db.execute("SELECT priority, count(*) FROM queue GROUP BY priority"))
        hits, backfill = int(rows.get(HIT, 0)), int(rows.get(BACKFILL, 0))
        return {"hits": hits, "backfill": backfill, "total": hits + backfill}

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO kv VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def delete(self, key: str) -> None:
        """Forget `key`: `get` answers its default (for a switch, the config's value) again."""
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def mark_unembeddable(self, items: Sequence[tuple[str, str]]) -> None:
        if not items:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO unembeddable (doc_id, why, at) VALUES (?, ?, ?)"
                " ON CONFLICT(doc_id) DO UPDATE SET why = excluded.why",
                [(d, why, now) for d, why in items],
            )
            self._db.execute("COMMIT")

    def forget_unembeddable(self, doc_ids: Sequence[str]) -> None:
        with self._lock:
            if not self._db.execute("SELECT 1 FROM unembeddable LIMIT 1").fetchone():
                return  # the common case: one cheap read per write
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "DELETE FROM unembeddable WHERE doc_id = ?", [(d,) for d in doc_ids]
            )
            self._db.execute("COMMIT")

    def exclude(self, doc_ids: Sequence[str], actor: str) -> list[str]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            listed = [
                d
                for d in dict.fromkeys(doc_ids)
                if self._db.execute(
                    "UPDATE unembeddable SET excluded_by = ? WHERE doc_id = ?", (actor, d)
                ).rowcount
            ]
            self._db.execute("COMMIT")
        return listed

    def unembeddable(self, shown: int = 20) -> dict[str, Any]:
        """Documents that cannot be re-embedded: `count` (not excluded: they block the gate
        and count as missing in coverage), `excluded`, and the first `shown` with why."""
        with self._lock:
            count, excluded = self._db.execute(
                "SELECT coalesce(sum(excluded_by IS NULL), 0),"
                " coalesce(sum(excluded_by IS NOT NULL), 0) FROM unembeddable"
            ).fetchone()
            rows = self._db.execute(
                "SELECT doc_id, why FROM unembeddable WHERE excluded_by IS NULL ORDER BY doc_id"
                " LIMIT ?",
                (shown,),
            ).fetchall()
        return {
            "count": int(count),
            "excluded": int(excluded),
            "ids": [{"doc_id": d, "why": why} for d, why in rows],
        }

    def unembeddable_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT doc_id FROM unembeddable")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
