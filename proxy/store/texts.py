"""The texts of a collection that stores none, from a JSONL file of {id, text}, looked up by id
without holding them in memory: an index of line offsets by id, in SQLite beside the other
caches, built once per version of the file (path, size, modification time). A lookup reads
one line of the file. A line that is not a valid {id, text} gives its document no text (named
by `problem`, counted and listed by the migration, never a build refused whole).

Edits made through the proxy to such a collection's documents can't go into the file: their
texts are kept in `EditedTexts` (records of the migration state, shared by a fleet), which
lookups read first."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import orjson

from proxy.document import CorpusError, parse_doc
from proxy.store import Records

_BATCH = 10_000


class TextSource(Mapping[str, str]):
    def __init__(self, path: Path, index_dir: Path) -> None:
        self.path = path
        st = path.stat()
        version = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        key = hashlib.sha256(version.encode()).hexdigest()[:16]
        index_dir.mkdir(parents=True, exist_ok=True)
        self.index = index_dir / f"texts-{key}.sqlite"
        if not self.index.exists():
            self._build()
        self._db = sqlite3.connect(self.index, check_same_thread=False)
        self._lock = threading.Lock()  # one connection and one file handle, for every thread
        self._fh = path.open("rb")

    def _build(self) -> None:
        """Scan the file once (each line checked as a corpus line is), written to a temporary
        database renamed into place: an interrupted build leaves none."""
        tmp = self.index.with_suffix(f".{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, off INTEGER, len INTEGER)")
            db.execute("CREATE TABLE bad (id TEXT, error TEXT NOT NULL)")
            rows: list[tuple[str, int, int]] = []
            offset = 0
            with self.path.open("rb") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            rows.append((self._parse(line, n)[0], offset, len(line)))
                        except CorpusError as e:  # its document has no text: listed, not fatal
                            bad = _id_of(line)
                            if bad is not None:
                                rows.append((bad, -1, 0))
                            db.execute("INSERT INTO bad VALUES (?, ?)", (bad, str(e)))
                    offset += len(line)
                    if len(rows) >= _BATCH:
                        db.executemany("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", rows)
                        rows.clear()
            db.executemany("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", rows)
            db.commit()
        except BaseException:
            db.close()
            tmp.unlink(missing_ok=True)
            raise
        db.close()
        os.replace(tmp, self.index)

    def _parse(self, line: bytes, n: int | str) -> tuple[str, str]:
        where = f"{self.path}:{n}"
        try:
            doc = parse_doc(orjson.loads(line), where)
        except orjson.JSONDecodeError as e:
            raise CorpusError(f"{where}: not JSON: {e}") from e
        return doc.doc_id, doc.text

    def __getitem__(self, doc_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT off, len FROM t WHERE id = ?", (doc_id,)).fetchone()
            if row is None or row[0] < 0:
                raise KeyError(doc_id)
            self._fh.seek(row[0])
            line = self._fh.read(row[1])
        return self._parse(line, f"offset {row[0]}")[1]

    def __contains__(self, doc_id: object) -> bool:
        with self._lock:
            row = self._db.execute("SELECT off FROM t WHERE id = ?", (doc_id,)).fetchone()
        return row is not None and row[0] >= 0

    def problem(self, doc_id: str) -> str | None:
        """Why `doc_id` has no text here: its line's fault, or None (no line: not listed)."""
        with self._lock:
            row = self._db.execute("SELECT error FROM bad WHERE id = ?", (doc_id,)).fetchone()
        return str(row[0]) if row else None

    def bad_lines(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._db.execute("SELECT error FROM bad")]

    def missing(self, doc_ids: Sequence[str]) -> list[str]:
        """The ids without a text, in one query per batch (checking a whole collection)."""
        out: list[str] = []
        for i in range(0, len(doc_ids), 500):
            chunk = list(doc_ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                have = {
                    r[0]
                    for r in self._db.execute(
                        f"SELECT id FROM t WHERE off >= 0 AND id IN ({marks})", chunk
                    )
                }
            out.extend(d for d in chunk if d not in have)
        return out

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM t WHERE off >= 0")]
        return iter(ids)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM t WHERE off >= 0").fetchone()[0])

    def __hash__(self) -> int:
        return hash(self.index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSource) and other.index == self.index


def _id_of(line: bytes) -> str | None:
    """The id of a line that is not a valid document, if it names one."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    raw = obj.get("_id", obj.get("id")) if isinstance(obj, dict) else None
    return (
        str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) and raw != "" else None
    )


class EditedTexts:
    """Texts written through the proxy for documents whose texts come from a file: kept as
    records of the migration state (`edited:<doc id>`: durable, and shared by a fleet, so
    every replica reads an edit made through another) and read before the file, so an edit is
    neither lost nor re-embedded from the file's older text. `legacy`: the SQLite file of an
    earlier version (`edited-texts.sqlite` under one process's data_dir), imported once."""

    PREFIX = "edited:"

    def __init__(self, records: Records, legacy: Path | None = None) -> None:
        self._records = records
        if legacy is not None:
            self._import_legacy(legacy)

    def get(self, doc_id: str) -> str | None:
        text = self._records.get(self.PREFIX + doc_id)
        return None if text is None else str(text)

    def put(self, texts: Sequence[tuple[str, str]]) -> None:
        for doc_id, text in texts:
            self._records.set(self.PREFIX + doc_id, text)

    def forget(self, doc_ids: Sequence[str]) -> None:
        for doc_id in doc_ids:
            self._records.delete(self.PREFIX + doc_id)

    def _import_legacy(self, path: Path) -> None:
        """Its texts, where the records hold none for the document (an edit made since
        wins), and the import recorded (`imported:<path>`) so a text forgotten since is not
        brought back. The file is left alone (read, never written or deleted)."""
        mark = f"imported:{path.resolve()}"
        if not path.exists() or self._records.get(mark):
            return
        # (opened read-write: a WAL left by a killed process is recovered, not refused)
        db = sqlite3.connect(path)
        try:
            rows = db.execute("SELECT id, text FROM edited").fetchall()
        finally:
            db.close()
        for doc_id, text in rows:
            if self.get(doc_id) is None:
                self._records.set(self.PREFIX + doc_id, text)
        self._records.set(mark, True)
