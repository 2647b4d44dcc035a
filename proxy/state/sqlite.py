"""The single-process state store (see proxy/state/__init__.py): files under `data_dir`.

`migration.sqlite` (SQLite in WAL mode, fsync on commit, so a `kill -9` loses nothing
committed) holds the queue, switches, counters and the like; `writes.sqlite` the write
journal; `serving.json` the pointer (written by atomic rename: a crash leaves the old pointer
or the new one, never neither); `audit.jsonl` the audit log (append-only JSON lines, fsynced).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proxy.journal import WriteJournal
from proxy.routing import parse_routing, routing_dict
from proxy.sqlite import durable_sqlite
from proxy.state import BACKFILL, HIT, PRUNED, Changes, Member, Pointer, Reembedded
from proxy.store import write_json_atomic

DB = "migration.sqlite"
JOURNAL = "writes.sqlite"
POINTER = "serving.json"
AUDIT = "audit.jsonl"


class SqliteState:
    shared = False

    def __init__(
        self, data_dir: str | Path, retry_base_s: float = 1.0, retry_max_s: float = 60.0
    ) -> None:
        self.dir = Path(data_dir)
        self.where = str(self.dir)
        self._db = durable_sqlite(
            self.dir / DB,
            "CREATE TABLE IF NOT EXISTS queue (doc_id TEXT PRIMARY KEY, priority INTEGER,"
            " enqueued_at REAL, leased_until REAL DEFAULT 0)",
            "CREATE INDEX IF NOT EXISTS queue_order ON queue (priority, enqueued_at)",
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)",
            "CREATE TABLE IF NOT EXISTS unembeddable (doc_id TEXT PRIMARY KEY, why TEXT NOT NULL,"
            " at REAL NOT NULL, excluded_by TEXT)",
            "CREATE TABLE IF NOT EXISTS counts (key TEXT, name TEXT, value REAL NOT NULL,"
            " PRIMARY KEY (key, name))",
            "CREATE TABLE IF NOT EXISTS reembedded (doc_id TEXT PRIMARY KEY, n INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " doc_id TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS members (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
            " at REAL NOT NULL, info TEXT NOT NULL)",
        )
        self._lock = threading.Lock()
        self._sections: dict[str, threading.Lock] = {}
        self._journal = WriteJournal(self.dir / JOURNAL, retry_base_s, retry_max_s)

    @property
    def journal(self) -> WriteJournal:
        return self._journal

    def ping(self) -> None:
        return None  # a file under data_dir: there while the process is

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

    def claim_ids(self, doc_ids: Sequence[str], lease_s: float) -> list[str]:
        ids = list(dict.fromkeys(doc_ids))
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO queue (doc_id, priority, enqueued_at) VALUES (?, ?, ?)"
                " ON CONFLICT(doc_id) DO NOTHING",
                [(d, BACKFILL, now) for d in ids],
            )
            held = []
            for d in ids:
                cur = self._db.execute(
                    "UPDATE queue SET leased_until = ? WHERE doc_id = ? AND leased_until < ?",
                    (now + lease_s, d, now),
                )
                if cur.rowcount:
                    held.append(d)
            self._db.execute("COMMIT")
            return held

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

    def clear_queue(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM queue")

    def add_counts(self, key: str, deltas: dict[str, float]) -> dict[str, float]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO counts VALUES (?, ?, ?)"
                " ON CONFLICT(key, name) DO UPDATE SET value = value + excluded.value",
                [(key, name, float(v)) for name, v in deltas.items()],
            )
            self._db.execute("COMMIT")
            return self._counts(key)

    def counts(self, key: str) -> dict[str, float]:
        with self._lock:
            return self._counts(key)

    def _counts(self, key: str) -> dict[str, float]:
        rows = self._db.execute("SELECT name, value FROM counts WHERE key = ?", (key,))
        return {name: float(v) for name, v in rows}

    def record_reembedded(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO reembedded VALUES (?, 1) ON CONFLICT(doc_id) DO UPDATE SET n = n + 1",
                [(d,) for d in doc_ids],
            )
            self._db.execute("COMMIT")

    def reembedded(self) -> Reembedded:
        with self._lock:
            total, distinct = self._db.execute(
                "SELECT coalesce(sum(n), 0), count(*) FROM reembedded"
            ).fetchone()
        return Reembedded(int(total), int(distinct))

    def reset_reembedded(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM reembedded")

    def pointer(self) -> Pointer | None:
        path = self.dir / POINTER
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        back = data.get("rollback_to")
        return Pointer(parse_routing(data), parse_routing(back) if back else None)

    def save_pointer(self, pointer: Pointer) -> None:
        data = routing_dict(pointer.routing)
        data["rollback_to"] = routing_dict(pointer.rollback_to) if pointer.rollback_to else None
        write_json_atomic(self.dir / POINTER, data)

    def audit_append(self, entry: dict[str, Any]) -> None:
        path = self.dir / AUDIT
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, path.open("a+b") as fh:
            # A line torn by a crash must not swallow this entry: start on a fresh line.
            torn = False
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            fh.write((("\n" if torn else "") + json.dumps(entry, default=str) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def audit_tail(self, n: int | None = 50) -> list[dict[str, Any]]:
        path = self.dir / AUDIT
        if not path.exists():
            return []
        out = []
        lines = path.read_text().splitlines()
        for line in lines[-n:] if n is not None else lines:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line torn by a crash mid-append: skipped, not fatal
                continue
        return out

    @contextmanager
    def exclusive(self, section: str) -> Iterator[None]:
        with self._lock:
            lock = self._sections.setdefault(section, threading.Lock())
        with lock:
            yield

    def log_changes(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO changes (doc_id) VALUES (?)", [(d,) for d in doc_ids])
            self._db.execute("COMMIT")

    def changes_since(self, seq: int, limit: int = 10_000) -> Changes:
        complete = seq >= int(self.get(PRUNED, 0))
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, doc_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            if not rows:
                last = self._db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
                return Changes([], max(seq, int(last)), complete)
        return Changes(list(dict.fromkeys(r[1] for r in rows)), int(rows[-1][0]), complete)

    def prune_changes(self, keep: int) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            (cut,) = self._db.execute(
                "SELECT coalesce(max(seq), 0) - ? FROM changes", (keep,)
            ).fetchone()
            n = self._db.execute("DELETE FROM changes WHERE seq <= ?", (cut,)).rowcount
            self._db.execute("COMMIT")
        if n:
            self.set(PRUNED, max(int(cut), int(self.get(PRUNED, 0))))
        return int(n)

    def beat(self, name: str, role: str, info: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO members VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " role = excluded.role, at = excluded.at, info = excluded.info",
                (name, role, time.time(), json.dumps(info, default=str)),
            )

    def members(self, max_age_s: float = 30.0) -> list[Member]:
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                "SELECT name, role, at, info FROM members WHERE at >= ? ORDER BY at DESC",
                (now - max_age_s,),
            ).fetchall()
        return [Member(n, r, round(now - at, 1), json.loads(i)) for n, r, at, i in rows]

    def close(self) -> None:
        self._journal.close()
        with self._lock:
            self._db.close()
