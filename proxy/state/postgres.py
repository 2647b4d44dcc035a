"""The fleet's state store (see proxy/state/__init__.py): one PostgreSQL database shared by
every replica and worker given the same `state.url`.

Same meaning as `SqliteState`, value for value and in the same orders. What a fleet adds:
claims lock their rows with `FOR UPDATE SKIP LOCKED` (two workers never get one id), counters
add in one upsert, `exclusive` holds a session advisory lock, and the change log's sequence is
handed out one transaction at a time (a reader never skips a change committed late).
Multi-row upserts lock rows in doc id order: two replicas enqueueing the same ids in other
orders would otherwise deadlock.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from proxy.journal import Batch, backoff, batch_of, status_of
from proxy.routing import parse_routing, routing_dict
from proxy.state import (
    BACKFILL,
    HIT,
    PRUNED,
    Changes,
    Member,
    Pointer,
    Reembedded,
    StateUnavailable,
)

_loose = partial(json.dumps, default=str)  # audit entries and heartbeats, as SqliteState

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS crossfade_queue (doc_id text PRIMARY KEY, priority integer"
    " NOT NULL, enqueued_at double precision NOT NULL, pos integer NOT NULL DEFAULT 0,"
    " leased_until double precision NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS crossfade_queue_order ON crossfade_queue"
    " (priority, enqueued_at, pos)",
    "CREATE TABLE IF NOT EXISTS crossfade_kv (key text PRIMARY KEY, value jsonb NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crossfade_unembeddable (doc_id text PRIMARY KEY,"
    " why text NOT NULL, at double precision NOT NULL, excluded_by text)",
    "CREATE TABLE IF NOT EXISTS crossfade_counts (key text, name text,"
    " value double precision NOT NULL, PRIMARY KEY (key, name))",
    "CREATE TABLE IF NOT EXISTS crossfade_reembedded (doc_id text PRIMARY KEY, n integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crossfade_changes (seq bigserial PRIMARY KEY,"
    " doc_id text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crossfade_members (name text PRIMARY KEY, role text NOT NULL,"
    " at double precision NOT NULL, info jsonb NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crossfade_pointer (id integer PRIMARY KEY CHECK (id = 1),"
    " value jsonb NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crossfade_audit (seq bigserial PRIMARY KEY, entry jsonb NOT NULL)",
    "CREATE TABLE IF NOT EXISTS crossfade_journal (batch bigserial PRIMARY KEY, op text"
    " NOT NULL, body jsonb NOT NULL, begun_at double precision NOT NULL, attempts integer"
    " NOT NULL DEFAULT 0, next_at double precision NOT NULL DEFAULT 0, error text,"
    " rest jsonb, applied boolean NOT NULL DEFAULT false)",
)


def where(url: str) -> str:
    """`postgresql://HOST:PORT/DB`, or `postgresql:///DB?host=SOCKET_DIR`: never the user's
    password (nor anything else of the URL but where it points)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ValueError("state.url is not a PostgreSQL connection URI") from None
    host, db = str(info.get("host") or ""), str(info.get("dbname") or info.get("user") or "")
    if not host or host.startswith("/"):
        return f"postgresql:///{db}?host={host or '(default socket)'}"
    return f"postgresql://{host}:{info.get('port') or 5432}/{db}"


class _Db:
    """The pool, every failure to reach the server raised as StateUnavailable."""

    # After a failure, calls fail at once for this long rather than each waiting out the
    # connect timeout: a replica serving through an outage stalls on it once a second, not on
    # every read of a switch.
    RETRY_S = 1.0

    def __init__(self, pool: ConnectionPool, where: str) -> None:
        self.pool, self.where = pool, where
        self._down: tuple[float, str] | None = None  # (retry after, why)

    def unreachable(self, e: Exception) -> StateUnavailable:
        return StateUnavailable(f"state store {self.where} unreachable: {e}")

    @contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        down = self._down
        if down is not None and time.monotonic() < down[0]:
            raise StateUnavailable(f"state store {self.where} unreachable: {down[1]}")
        try:
            with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as e:
            self._down = (time.monotonic() + self.RETRY_S, str(e))
            raise self.unreachable(e) from e
        self._down = None

    @contextmanager
    def tx(self) -> Iterator[psycopg.Connection[Any]]:
        with self.conn() as conn, conn.transaction():
            yield conn


class PostgresJournal:
    """`WriteJournal`'s semantics in the table `crossfade_journal` (proxy/journal.py)."""

    def __init__(self, db: _Db, retry_base_s: float = 1.0, retry_max_s: float = 60.0) -> None:
        self._db = db
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s

    def begin(self, op: str, items: Sequence[Any]) -> int:
        with self._db.conn() as c:
            row = c.execute(
                "INSERT INTO crossfade_journal (op, body, begun_at) VALUES (%s, %s, %s)"
                " RETURNING batch",
                (op, Jsonb(list(items)), time.time()),
            ).fetchone()
        return int(row[0]) if row else 0

    def applied(self, batch: int) -> None:
        with self._db.conn() as c:
            c.execute("UPDATE crossfade_journal SET applied = true WHERE batch = %s", (batch,))

    def forget_applied(self) -> int:
        with self._db.conn() as c:
            return c.execute("DELETE FROM crossfade_journal WHERE applied").rowcount

    def retry_later(
        self,
        batch: int,
        error: str,
        sides_left: Sequence[str],
        vectors: dict[str, list[list[float]]] | None = None,
    ) -> float:
        with self._db.tx() as c:
            row = c.execute(
                "SELECT attempts FROM crossfade_journal WHERE batch = %s FOR UPDATE", (batch,)
            ).fetchone()
            attempts = int(row[0]) + 1 if row else 1
            wait = backoff(self.retry_base_s, self.retry_max_s, attempts)
            c.execute(
                "UPDATE crossfade_journal SET attempts = %s, next_at = %s, error = %s, rest = %s"
                " WHERE batch = %s",
                (
                    attempts,
                    time.time() + wait,
                    error,
                    Jsonb({"sides": list(sides_left), "vectors": vectors}),
                    batch,
                ),
            )
        return wait

    def pending(self, unflushed: bool = False) -> list[Batch]:
        with self._db.conn() as c:
            rows = c.execute(
                "SELECT batch, op, body, begun_at, attempts, next_at, error, rest"
                " FROM crossfade_journal"
                + ("" if unflushed else " WHERE NOT applied")
                + " ORDER BY batch"
            ).fetchall()
        return [batch_of(r, r[2], r[7]) for r in rows]

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        with self._db.conn() as c:
            row = c.execute(
                "SELECT count(*), count(*) FILTER (WHERE attempts > 0), min(begun_at),"
                " max(attempts), min(next_at) FROM crossfade_journal WHERE NOT applied"
            ).fetchone()
            last = c.execute(
                "SELECT batch, error FROM crossfade_journal WHERE NOT applied"
                " AND error IS NOT NULL ORDER BY batch LIMIT 1"
            ).fetchone()
        return status_of(now, row or (0, 0, None, None, None), last)

    def close(self) -> None:
        return None  # the pool is the state's: closed with it


class PostgresState:
    shared = True

    def __init__(
        self,
        url: str,
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
        connect_timeout_s: float = 3.0,
        pool_size: int = 8,
    ) -> None:
        self.where = where(url)
        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            # libpq counts whole seconds (2 at least); the pool's wait is the exact bound.
            kwargs={"autocommit": True, "connect_timeout": max(2, math.ceil(connect_timeout_s))},
            timeout=connect_timeout_s,
            # A pooled connection the server dropped (a restart) is replaced, not handed out.
            check=ConnectionPool.check_connection,
            open=False,
            name="crossfade-state",
        )
        self._db = _Db(pool, self.where)
        try:
            pool.open(wait=True, timeout=connect_timeout_s)
            with self._db.tx() as c:
                # Two processes starting at once must not race on CREATE TABLE IF NOT EXISTS.
                c.execute("SELECT pg_advisory_xact_lock(hashtext('crossfade-schema'))")
                for ddl in SCHEMA:
                    c.execute(ddl)
        except (psycopg.OperationalError, PoolTimeout) as e:
            pool.close()
            raise self._db.unreachable(e) from e
        except BaseException:
            pool.close()
            raise
        self._lock = threading.Lock()
        self._sections: dict[str, threading.Lock] = {}
        self._journal = PostgresJournal(self._db, retry_base_s, retry_max_s)

    @property
    def journal(self) -> PostgresJournal:
        return self._journal

    def ping(self) -> None:
        with self._db.conn() as c:
            c.execute("SELECT 1")

    # --- the re-embed queue ---------------------------------------------------------------
    def enqueue(self, doc_ids: Sequence[str], priority: int) -> int:
        if not doc_ids:
            return 0
        # pos keeps the caller's order among ids enqueued together (SQLite: rowid order).
        pos = {d: i for i, d in enumerate(dict.fromkeys(doc_ids))}
        ids = sorted(pos)
        with self._db.conn() as c:
            rows = c.execute(
                "INSERT INTO crossfade_queue (doc_id, priority, enqueued_at, pos)"
                " SELECT d, %s, %s, p FROM unnest(%s::text[], %s::integer[]) AS u(d, p)"
                " ON CONFLICT (doc_id) DO UPDATE"
                " SET priority = least(crossfade_queue.priority, excluded.priority)"
                " RETURNING (xmax = 0)",  # true: inserted, not updated
                (priority, time.time(), ids, [pos[d] for d in ids]),
            ).fetchall()
        return sum(1 for (new,) in rows if new)

    def claim(self, n: int, lease_s: float) -> list[str]:
        if n <= 0:
            return []
        now = time.time()
        with self._db.conn() as c:
            rows = c.execute(
                "UPDATE crossfade_queue q SET leased_until = %s FROM ("
                " SELECT doc_id FROM crossfade_queue WHERE leased_until < %s"
                " ORDER BY priority, enqueued_at, pos LIMIT %s FOR UPDATE SKIP LOCKED) free"
                " WHERE q.doc_id = free.doc_id"
                " RETURNING q.doc_id, q.priority, q.enqueued_at, q.pos",
                (now + lease_s, now, n),
            ).fetchall()
        return [r[0] for r in sorted(rows, key=lambda r: (r[1], r[2], r[3]))]

    def claim_ids(self, doc_ids: Sequence[str], lease_s: float) -> list[str]:
        ids = sorted(set(doc_ids))
        if not ids:
            return []
        now = time.time()
        # One statement: an id not queued is inserted held; a queued one is taken only if its
        # lease ran out. A row a worker's claim holds (FOR UPDATE) is waited for, then its new
        # lease seen: never held by two at once.
        with self._db.conn() as c:
            rows = c.execute(
                "INSERT INTO crossfade_queue (doc_id, priority, enqueued_at, pos, leased_until)"
                " SELECT d, %s, %s, p::integer, %s"
                " FROM unnest(%s::text[]) WITH ORDINALITY AS u(d, p)"
                " ON CONFLICT (doc_id) DO UPDATE SET leased_until = excluded.leased_until"
                " WHERE crossfade_queue.leased_until < %s"
                " RETURNING doc_id",
                (BACKFILL, now, now + lease_s, ids, now),
            ).fetchall()
        held = {r[0] for r in rows}
        return [d for d in dict.fromkeys(doc_ids) if d in held]

    def done(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            with self._db.conn() as c:
                c.execute(
                    "DELETE FROM crossfade_queue WHERE doc_id = ANY(%s)", (sorted(set(doc_ids)),)
                )

    def release(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            with self._db.conn() as c:
                c.execute(
                    "UPDATE crossfade_queue SET leased_until = 0 WHERE doc_id = ANY(%s)",
                    (sorted(set(doc_ids)),),
                )

    def depth(self) -> dict[str, int]:
        with self._db.conn() as c:
            rows = dict(
                c.execute("SELECT priority, count(*) FROM crossfade_queue GROUP BY priority")
            )
        hits, backfill = int(rows.get(HIT, 0)), int(rows.get(BACKFILL, 0))
        return {"hits": hits, "backfill": backfill, "total": hits + backfill}

    def clear_queue(self) -> None:
        with self._db.conn() as c:
            c.execute("DELETE FROM crossfade_queue")

    # --- switches and records -------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        with self._db.conn() as c:
            row = c.execute("SELECT value FROM crossfade_kv WHERE key = %s", (key,)).fetchone()
        return row[0] if row else default

    def set(self, key: str, value: Any) -> None:
        with self._db.conn() as c:
            c.execute(
                "INSERT INTO crossfade_kv VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, Jsonb(value)),
            )

    def delete(self, key: str) -> None:
        with self._db.conn() as c:
            c.execute("DELETE FROM crossfade_kv WHERE key = %s", (key,))

    # --- counters -------------------------------------------------------------------------
    def add_counts(self, key: str, deltas: dict[str, float]) -> dict[str, float]:
        names = sorted(deltas)
        with self._db.tx() as c:
            if names:
                c.execute(
                    "INSERT INTO crossfade_counts SELECT %s, name, v"
                    " FROM unnest(%s::text[], %s::double precision[]) AS u(name, v)"
                    " ON CONFLICT (key, name)"
                    " DO UPDATE SET value = crossfade_counts.value + excluded.value",
                    (key, names, [float(deltas[k]) for k in names]),
                )
            return self._counts(c, key)

    def counts(self, key: str) -> dict[str, float]:
        with self._db.conn() as c:
            return self._counts(c, key)

    @staticmethod
    def _counts(c: psycopg.Connection[Any], key: str) -> dict[str, float]:
        rows = c.execute("SELECT name, value FROM crossfade_counts WHERE key = %s", (key,))
        return {name: float(v) for name, v in rows}

    def record_reembedded(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        # One row per id (an upsert can't touch a row twice): an id listed twice counts twice.
        times = Counter(doc_ids)
        ids = sorted(times)
        with self._db.conn() as c:
            c.execute(
                "INSERT INTO crossfade_reembedded SELECT * FROM unnest(%s::text[], %s::integer[])"
                " ON CONFLICT (doc_id) DO UPDATE SET n = crossfade_reembedded.n + excluded.n",
                (ids, [times[d] for d in ids]),
            )

    def reembedded(self) -> Reembedded:
        with self._db.conn() as c:
            row = c.execute(
                "SELECT coalesce(sum(n), 0), count(*) FROM crossfade_reembedded"
            ).fetchone()
        total, distinct = row or (0, 0)
        return Reembedded(int(total), int(distinct))

    def reset_reembedded(self) -> None:
        with self._db.conn() as c:
            c.execute("DELETE FROM crossfade_reembedded")

    # --- documents that can't be re-embedded ----------------------------------------------
    def mark_unembeddable(self, items: Sequence[tuple[str, str]]) -> None:
        if not items:
            return
        why = dict(items)  # an id listed twice: its last why, as SQLite's executemany
        ids = sorted(why)
        with self._db.conn() as c:
            c.execute(
                "INSERT INTO crossfade_unembeddable (doc_id, why, at)"
                " SELECT d, w, %s FROM unnest(%s::text[], %s::text[]) AS u(d, w)"
                " ON CONFLICT (doc_id) DO UPDATE SET why = excluded.why",
                (time.time(), ids, [why[d] for d in ids]),
            )

    def forget_unembeddable(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            with self._db.conn() as c:
                c.execute(
                    "DELETE FROM crossfade_unembeddable WHERE doc_id = ANY(%s)",
                    (sorted(set(doc_ids)),),
                )

    def exclude(self, doc_ids: Sequence[str], actor: str) -> list[str]:
        wanted = list(dict.fromkeys(doc_ids))
        if not wanted:
            return []
        with self._db.conn() as c:
            rows = c.execute(
                "UPDATE crossfade_unembeddable SET excluded_by = %s WHERE doc_id = ANY(%s)"
                " RETURNING doc_id",
                (actor, sorted(wanted)),
            ).fetchall()
        listed = {r[0] for r in rows}
        return [d for d in wanted if d in listed]

    def unembeddable(self, shown: int = 20) -> dict[str, Any]:
        with self._db.conn() as c:
            row = c.execute(
                "SELECT count(*) FILTER (WHERE excluded_by IS NULL),"
                " count(*) FILTER (WHERE excluded_by IS NOT NULL) FROM crossfade_unembeddable"
            ).fetchone()
            # COLLATE "C": byte order, as SQLite's, whatever the database's locale.
            rows = c.execute(
                "SELECT doc_id, why FROM crossfade_unembeddable WHERE excluded_by IS NULL"
                ' ORDER BY doc_id COLLATE "C" LIMIT %s',
                (max(shown, 0),),
            ).fetchall()
        count, excluded = row or (0, 0)
        return {
            "count": int(count),
            "excluded": int(excluded),
            "ids": [{"doc_id": d, "why": why} for d, why in rows],
        }

    def unembeddable_ids(self) -> set[str]:
        with self._db.conn() as c:
            return {r[0] for r in c.execute("SELECT doc_id FROM crossfade_unembeddable")}

    # --- the serving pointer and the audit log --------------------------------------------
    def pointer(self) -> Pointer | None:
        with self._db.conn() as c:
            row = c.execute("SELECT value FROM crossfade_pointer WHERE id = 1").fetchone()
        if row is None:
            return None
        data = row[0]
        back = data.get("rollback_to")
        return Pointer(parse_routing(data), parse_routing(back) if back else None)

    def save_pointer(self, pointer: Pointer) -> None:
        data = routing_dict(pointer.routing)
        data["rollback_to"] = routing_dict(pointer.rollback_to) if pointer.rollback_to else None
        with self._db.conn() as c:  # one row, one statement: whole or not at all
            c.execute(
                "INSERT INTO crossfade_pointer VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET value = excluded.value",
                (Jsonb(data),),
            )

    def audit_append(self, entry: dict[str, Any]) -> None:
        with self._db.conn() as c:
            c.execute(
                "INSERT INTO crossfade_audit (entry) VALUES (%s)", (Jsonb(entry, dumps=_loose),)
            )

    def audit_tail(self, n: int | None = 50) -> list[dict[str, Any]]:
        with self._db.conn() as c:
            if n is None:
                rows = c.execute("SELECT entry FROM crossfade_audit ORDER BY seq").fetchall()
            else:
                rows = c.execute(
                    "SELECT entry FROM (SELECT seq, entry FROM crossfade_audit"
                    " ORDER BY seq DESC LIMIT %s) t ORDER BY seq",
                    (max(n, 0),),
                ).fetchall()
        return [r[0] for r in rows]

    # --- one at a time, fleet-wide --------------------------------------------------------
    @contextmanager
    def exclusive(self, section: str) -> Iterator[None]:
        with self._lock:
            local = self._sections.setdefault(section, threading.Lock())
        key = "crossfade:" + section
        # Threads of this process queue on the local lock; processes on the advisory lock,
        # a session lock held by a connection of its own until the section ends.
        with local:
            try:
                conn = self._db.pool.getconn()
            except (psycopg.OperationalError, PoolTimeout) as e:
                raise self._db.unreachable(e) from e
            try:
                try:
                    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
                except psycopg.OperationalError as e:
                    conn.close()
                    raise self._db.unreachable(e) from e
                try:
                    yield
                finally:
                    try:
                        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
                    except psycopg.Error:
                        conn.close()  # broken: the server let the lock go with the session
            finally:
                self._db.pool.putconn(conn)  # a closed connection is discarded, not reused

    # --- the change log -------------------------------------------------------------------
    def log_changes(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        with self._db.tx() as c:
            # Sequence values are handed out at insert, visible at commit: writers one at a
            # time, so a reader that saw seq N never later finds a smaller one appear.
            c.execute("SELECT pg_advisory_xact_lock(hashtext('crossfade-changes'))")
            c.execute(
                "INSERT INTO crossfade_changes (doc_id)"
                " SELECT d FROM unnest(%s::text[]) WITH ORDINALITY AS u(d, i) ORDER BY i",
                (list(doc_ids),),
            )

    def changes_since(self, seq: int, limit: int = 10_000) -> Changes:
        complete = seq >= int(self.get(PRUNED, 0))
        with self._db.conn() as c:
            rows = c.execute(
                "SELECT seq, doc_id FROM crossfade_changes WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            ).fetchall()
            if not rows:
                row = c.execute("SELECT coalesce(max(seq), 0) FROM crossfade_changes").fetchone()
                return Changes([], max(seq, int(row[0]) if row else 0), complete)
        return Changes(list(dict.fromkeys(r[1] for r in rows)), int(rows[-1][0]), complete)

    def prune_changes(self, keep: int) -> int:
        with self._db.tx() as c:
            # The writers' lock: the cut and the record of it agree with what readers see.
            c.execute("SELECT pg_advisory_xact_lock(hashtext('crossfade-changes'))")
            row = c.execute(
                "SELECT coalesce(max(seq), 0) - %s FROM crossfade_changes", (keep,)
            ).fetchone()
            cut = int(row[0]) if row else 0
            n = c.execute("DELETE FROM crossfade_changes WHERE seq <= %s", (cut,)).rowcount
            if n:
                c.execute(
                    "INSERT INTO crossfade_kv VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET"
                    " value = to_jsonb(greatest(crossfade_kv.value::bigint, %s))",
                    (PRUNED, Jsonb(cut), cut),
                )
        return int(n)

    # --- the fleet ------------------------------------------------------------------------
    def beat(self, name: str, role: str, info: dict[str, Any]) -> None:
        with self._db.conn() as c:
            c.execute(
                "INSERT INTO crossfade_members VALUES (%s, %s, %s, %s) ON CONFLICT (name)"
                " DO UPDATE SET role = excluded.role, at = excluded.at, info = excluded.info",
                (name, role, time.time(), Jsonb(info, dumps=_loose)),
            )

    def members(self, max_age_s: float = 30.0) -> list[Member]:
        now = time.time()
        with self._db.conn() as c:
            rows = c.execute(
                "SELECT name, role, at, info FROM crossfade_members WHERE at >= %s"
                " ORDER BY at DESC",
                (now - max_age_s,),
            ).fetchall()
        return [Member(n, r, round(now - at, 1), info) for n, r, at, info in rows]

    def close(self) -> None:
        self._journal.close()
        self._db.pool.close()
