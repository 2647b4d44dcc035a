"""Durable SQLite: the one way crossfade opens a database it must not lose (migration state,
the write journal, texts edited through the proxy)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def durable_sqlite(path: str | Path, *schema: str) -> sqlite3.Connection:
    """SQLite in WAL mode with fsync on every commit (a `kill -9` loses nothing committed),
    autocommit unless a statement says BEGIN, shared across threads (callers hold a lock)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for statement in schema:
        db.execute(statement)
    return db
