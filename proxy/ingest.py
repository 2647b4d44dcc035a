"""Corpus ingest: read documents, embed with the target index's model, write, resumably.

Accepted JSONL lines: BEIR corpus (`{"_id", "title", "text", "metadata"}`) or plain
(`{"id", "text", "metadata"}`). Re-running skips every document the index already holds with
the same text hash, so an interrupted ingest resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from proxy.clock import now_iso
from proxy.document import CorpusError, Doc, parse_doc
from proxy.embedding import embed_documents_cached
from proxy.point import make_point
from proxy.runtime import Runtime
from proxy.store import IndexInfo


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
