"""Corpus ingest: read documents, embed with the target index's model, write, resumably.

Accepted JSONL lines: BEIR corpus (`{"_id", "title", "text", "metadata"}`) or plain
(`{"id", "text", "metadata"}`). Re-running skips every document the index already holds with
the same text hash, so an interrupted ingest resumes where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from proxy.clock import now_iso
from proxy.embedding import embed_documents_cached, text_sha256
from proxy.runtime import Runtime
from proxy.store import IndexInfo, PointWrite

MAX_TEXT_CHARS = 1_000_000


@dataclass
class Doc:
    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return text_sha256(self.text)


def doc_of(payload: dict[str, Any]) -> Doc:
    """A stored point's payload back into a Doc (its text hash is recomputed from the text)."""
    return Doc(payload["doc_id"], payload["text"], payload.get("metadata") or {})


class CorpusError(ValueError):
    pass


MAX_ID_CHARS = 512
MAX_METADATA_DEPTH = 32


def check_storable(value: Any, depth: int = 0) -> None:
    """Refuse what an index payload cannot hold, before anything is written: NaN and Infinity
    (which Python's JSON parsers accept), integers past 64 bits, lone surrogates, unbounded
    nesting. The engine would otherwise fail halfway through a dual write."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ValueError("strings must be valid unicode (no lone surrogates)") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_storable(k, depth + 1)
            check_storable(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_storable(v, depth + 1)


def parse_doc(obj: Any, where: str = "document") -> Doc:
    """One JSON object -> Doc, with a message naming what is wrong."""
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object")
    raw_id = obj.get("_id", obj.get("id"))
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id) == "":
        raise CorpusError(f"{where}: needs a non-empty string or integer 'id' (or BEIR '_id')")
    text = obj.get("text")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: 'text' must be a string")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise CorpusError(f"{where}: 'title' must be a string")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise CorpusError(f"{where}: 'metadata' must be an object")
    if title:
        meta = {**meta, "title": title}
        text = f"{title}\n{text}"
    if not text.strip():
        raise CorpusError(f"{where}: empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise CorpusError(f"{where}: text longer than {MAX_TEXT_CHARS} characters")
    if len(str(raw_id)) > MAX_ID_CHARS:
        raise CorpusError(f"{where}: id longer than {MAX_ID_CHARS} characters")
    for name, value in (("id", raw_id), ("text", text), ("metadata", meta)):
        try:
            check_storable(value)
        except ValueError as e:
            raise CorpusError(f"{where}: '{name}': {e}") from None
    return Doc(str(raw_id), text, meta)


def read_jsonl(path: str | Path) -> Iterator[Doc]:
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n}: not JSON: {e}") from e
            yield parse_doc(obj, f"{path}:{n}")


class Progress:
    """A one-line progress bar on stderr (no dependency; tqdm would be one more)."""

    def __init__(self, label: str, total: int, stream: Any = sys.stderr) -> None:
        self.label, self.total, self.done, self.stream = label, total, 0, stream
        self.t0 = time.monotonic()
        self._last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last < 0.5 and self.done < self.total:
            return
        self._last = now
        done = self.done >= self.total
        if not done and not self.stream.isatty():
            return  # a log file gets the final line only, not a trail of carriage returns
        rate = self.done / max(now - self.t0, 1e-9)
        pct = 100 * self.done / self.total if self.total else 100
        line = f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.0f}/s"
        self.stream.write(f"\r{line} " if self.stream.isatty() else line)
        if done:
            self.stream.write("\n")
        self.stream.flush()


def make_point(
    rt: Runtime,
    side: str,
    doc: Doc,
    vector: np.ndarray | None = None,
    stamp: str | None = None,
    conditional: bool = False,
) -> PointWrite:
    """The one way a document becomes a point: its payload, a BM25 vector on the new index,
    and, if given, a dense vector stamped with the side's model fingerprint. `conditional`
    makes the write apply only while the stored text is still this one. A vector from a
    model whose canary drifted is refused (ModelDrift)."""
    if vector is not None:
        from proxy.migration.canary import refuse_drifted

        refuse_drifted(rt, side)
    return PointWrite(
        doc_id=doc.doc_id,
        text=doc.text,
        text_sha256=doc.sha,
        metadata=doc.metadata,
        dense=vector,
        fingerprint=rt.model(side).fingerprint.id if vector is not None else None,
        sparse=rt.bm25.document(doc.text) if side == "new" else None,
        embedded_at=(stamp or now_iso()) if vector is not None else None,
        if_text_sha256=doc.sha if conditional else None,
    )


def ensure_index(rt: Runtime, side: str) -> IndexInfo:
    """Create the side's index bound to the side's model, or check an existing binding."""
    model = rt.model(side)
    store = rt.store(side)
    want = IndexInfo(
        dim=model.fingerprint.dim, fingerprint=model.fingerprint.id, sparse=side == "new"
    )
    have = store.info()
    if have is None:
        store.create(want)
        return want
    if have.fingerprint != want.fingerprint:
        raise RuntimeError(
            f"the {side} index is bound to model {have.fingerprint}, but the configured {side} "
            f"model is {want.fingerprint}: refusing to mix models in one index"
        )
    return have


def ingest(
    rt: Runtime, side: str, docs: Iterable[Doc], batch: int = 256, progress: bool = True
) -> dict[str, int]:
    """Embed and write `docs` into the `side` index; returns counts written and skipped."""
    docs = list(docs)
    ensure_index(rt, side)
    store, model = rt.store(side), rt.model(side)
    bar = Progress(f"ingest {side}", len(docs)) if progress else None
    written = skipped = 0
    for start in range(0, len(docs), batch):
        chunk = docs[start : start + batch]
        have = store.retrieve([d.doc_id for d in chunk], ["vector_sha256"])
        todo = [d for d in chunk if have.get(d.doc_id, {}).get("vector_sha256") != d.sha]
        skipped += len(chunk) - len(todo)
        if bar and len(chunk) > len(todo):
            bar(len(chunk) - len(todo))
        if not todo:
            continue
        vecs = embed_documents_cached(
            model, [d.text for d in todo], rt.embedding_cache, progress=bar
        )
        stamp = now_iso()
        store.upsert([make_point(rt, side, d, vecs[i], stamp) for i, d in enumerate(todo)])
        written += len(todo)
    store.flush()
    return {"written": written, "skipped": skipped, "total": store.count()}
