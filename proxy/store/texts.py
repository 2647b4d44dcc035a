"""The texts of a collection that stores none, from a JSONL file of {id, text}, looked up by id
without holding them in memory: an index of line offsets by id, in SQLite beside the other
caches, built once per version of the file (path, size, modification time). A lookup reads
one line of the file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import orjson

from proxy.ingest import CorpusError, parse_doc

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
            rows: list[tuple[str, int, int]] = []
            offset = 0
            with self.path.open("rb") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        rows.append((self._parse(line, n)[0], offset, len(line)))
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
            if row is None:
                raise KeyError(doc_id)
            self._fh.seek(row[0])
            line = self._fh.read(row[1])
        return self._parse(line, f"offset {row[0]}")[1]

    def __contains__(self, doc_id: object) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM t WHERE id = ?", (doc_id,)).fetchone() is not None
            )

    def missing(self, doc_ids: Sequence[str]) -> list[str]:
        """The ids without a text, in one query per batch (checking a whole collection)."""
        out: list[str] = []
        for i in range(0, len(doc_ids), 500):
            chunk = list(doc_ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                have = {
                    r[0] for r in self._db.execute(f"SELECT id FROM t WHERE id IN ({marks})", chunk)
                }
            out.extend(d for d in chunk if d not in have)
        return out

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM t")]
        return iter(ids)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM t").fetchone()[0])

    def __hash__(self) -> int:
        return hash(self.index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSource) and other.index == self.index
