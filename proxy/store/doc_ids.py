"""Point id -> doc id, remembered on disk beside an embedded shard.

A point's id is uuid5 of its doc id (`proxy.store.point_id`): a mapping that never changes
but can't be inverted. Without this, naming a search hit means reading its payload, text and
all: 15-20 ms per 100 hits not read before, more than the search itself at 1M points, and at
1M a benchmark's queries keep meeting hits not read before (docs/measurements/scale.md). So
every upsert remembers its pairs here, and a hit missing (a shard written before this file
existed) is read from its payload once and remembered.

A cache: it is never wrong (the mapping never changes) and losing it costs speed only, so it
is written without fsync.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FILE = "doc_ids.sqlite"
CHUNK = 500  # ids per statement (SQLite's variable limit is far above)


class DocIds:
    def __init__(self, shard_dir: Path) -> None:
        self._db = sqlite3.connect(
            str(shard_dir / FILE), check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS doc_ids (point TEXT PRIMARY KEY, doc TEXT NOT NULL)"
            " WITHOUT ROWID"
        )
        self._lock = threading.Lock()

    def remember(self, pairs: Iterable[tuple[Any, str]]) -> None:
        rows = [(str(p), d) for p, d in pairs]
        if rows:
            with self._lock:
                self._db.executemany("INSERT OR IGNORE INTO doc_ids VALUES (?, ?)", rows)

    def lookup(self, points: Sequence[Any]) -> dict[str, str]:
        """Doc ids of the `points` remembered, keyed by the point id as a string."""
        keys = list({str(p) for p in points})
        out: dict[str, str] = {}
        with self._lock:
            for i in range(0, len(keys), CHUNK):
                part = keys[i : i + CHUNK]
                marks = ",".join("?" * len(part))
                out.update(
                    self._db.execute(
                        f"SELECT point, doc FROM doc_ids WHERE point IN ({marks})", part
                    ).fetchall()
                )
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
