"""Document writes through the proxy: applied to every live index with that index's own model
(dual write), BM25 kept current, durable before the call returns (the journal fsynced; the
indexes flushed together by `flush_writes`, the journal keeping each batch until then).

A write is embedded for every index first, outside any lock (a slow or failing model delays
that write and nothing else); a model that fails there leaves the write applied nowhere. Then,
one batch at a time, it goes through the write-ahead journal (proxy/journal.py) to every
index: two batches touching one document can't land in opposite orders in the two indexes.
An index that refuses its part (an outage, a full disk) leaves the batch in the journal,
retried with backoff until every index has it (`retry_journal`, run in the background);
later writes are refused, applied nowhere, until it lands.

Writing the new index embeds the new text with the new model right away, so an edit never
leaves a vector of an older text behind; a re-embed of the old text already in flight is then
refused by its conditional write (it names the text hash it was computed from).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from proxy.availability import probe
from proxy.clock import now_iso
from proxy.document import CorpusError, Doc
from proxy.errors import Unavailable
from proxy.ingest import Progress
from proxy.journal import DELETE, UPSERT, Batch
from proxy.migration.canary import refuse_drifted
from proxy.point import make_point
from proxy.runtime import SIDES, Runtime

log = logging.getLogger("crossfade")


class WritePending(Unavailable, RuntimeError):
    """An index refused its part of a batch: the batch stays in the write journal, retried
    until every index has it (first after `retry_after_s`). `applied`: the indexes that have
    it already."""

    def __init__(
        self,
        batch: int,
        applied: Sequence[str],
        left: Sequence[str],
        why: str,
        retry_after_s: float | None = None,
    ) -> None:
        self.batch, self.applied, self.left = batch, list(applied), list(left)
        where = f"applied to {' and '.join(applied)}, " if applied else ""
        super().__init__(
            f"write batch {batch} {where}not yet to the {' and '.join(left)} index ({why}): "
            "it stays in the write journal and is retried until every index has it; sending "
            "it again is safe",
            retry_after_s=retry_after_s,
        )


class JournalBehind(Unavailable, RuntimeError):
    """An earlier batch is not in every index yet: a later write waits (applied nowhere)."""

    def __init__(self, batch: Batch, retry_in_s: float) -> None:
        self.retry_in_s = retry_in_s
        super().__init__(
            f"this write was not applied: an earlier write (batch {batch.batch}) is not in "
            f"every index yet ({batch.error}); it is retried in {retry_in_s:.0f}s, writes "
            "resume once it lands",
            retry_after_s=retry_in_s,
        )


def live_sides(rt: Runtime, doc_ids: Sequence[str] = ()) -> list[str]:
    """The indexes that exist and are not retired. Every index is asked first (one cheap
    call each): if one can't be reached, the write is refused (IndexUnavailable) before it
    touches any index; so is an id that one of them can't key a point by (CorpusError)."""
    from proxy.migration.finish import retired

    gone = {"old"} if retired(rt) else set()  # after `migrate finish`: no more dual writes
    sides = [s for s in SIDES if s not in gone and probe(rt.store(s)).exists]
    for side in sides:  # ids an adopted collection can't key a point by: refused up front
        try:
            rt.store(side).check_ids(doc_ids)
        except ValueError as e:
            raise CorpusError(str(e)) from None
    return sides


def check_metadata(rt: Runtime, sides: Sequence[str], docs: Sequence[Doc]) -> None:
    """Metadata an index can't hold (an adopted Chroma collection's is flat): refused before
    the journal, so a bad write changes nothing and blocks no later one."""
    for side in sides:
        try:
            rt.store(side).check_metadata([(d.doc_id, d.metadata) for d in docs])
        except ValueError as e:
            raise CorpusError(str(e)) from None


def _embed(
    rt: Runtime,
    sides: Sequence[str],
    texts: list[str],
    given: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    out = {}
    for side in sides:
        if given and side in given:  # the app's own vectors, checked to be this side's model's
            out[side] = given[side]
            continue
        model = rt.model(side)
        model.configure_thread()  # writes run on pool threads: pin the model's thread count
        out[side] = model.embed_documents(texts)
    return out


def upsert_documents(
    rt: Runtime, docs: Sequence[Doc], given: Mapping[str, np.ndarray] | None = None
) -> list[str]:
    """Write `docs` to every live index; returns the indexes written. `given`: per side, the
    vectors of `docs` already known to be that side's model's (proxy/app_vectors.py)."""
    sides = live_sides(rt, [d.doc_id for d in docs])
    if not sides:
        raise Unavailable("no index exists yet: ingest into the old index first")
    for side in sides:  # refused whole, before the journal: no index half-written
        refuse_drifted(rt, side)
    check_metadata(rt, sides, docs)
    texts = [d.text for d in docs]
    vectors = _embed(rt, sides, texts, given)  # no lock held: a slow model holds up this only
    items = [asdict(d) for d in docs]
    with rt.writing():
        _catch_up(rt)
        now = _live_now(rt, sides)
        batch = rt.journal.begin(UPSERT, items)
        _apply(rt, batch, UPSERT, items, now, vectors)
    return now


def ingest_both(
    rt: Runtime, docs: Iterable[Doc], batch: int = 256, progress: bool = True
) -> dict[str, int]:
    """`crossfade ingest --index old` while a migration runs: every document is dual-written
    (a write to the old index alone would be missing from the new one, and lost at cutover).
    Documents the old index already holds with the same text are skipped (resumable)."""
    docs = list(docs)
    old = rt.store("old")
    bar = Progress("ingest old + new", len(docs)) if progress else None
    written = skipped = 0
    for start in range(0, len(docs), batch):
        chunk = docs[start : start + batch]
        have = old.retrieve([d.doc_id for d in chunk], ["text_sha256"])
        todo = [d for d in chunk if have.get(d.doc_id, {}).get("text_sha256") != d.sha]
        if todo:
            upsert_documents(rt, todo)
        written, skipped = written + len(todo), skipped + len(chunk) - len(todo)
        if bar:
            bar(len(chunk))
    flush_writes(rt)
    return {"written": written, "skipped": skipped, "total": old.count()}


def delete_documents(rt: Runtime, doc_ids: Sequence[str]) -> dict[str, int]:
    """Delete from every live index; returns how many existed, per index."""
    sides = live_sides(rt)
    with rt.writing():
        _catch_up(rt)
        sides = _live_now(rt, sides)
        existed = {side: len(rt.store(side).retrieve(doc_ids, [])) for side in sides}
        _apply(rt, rt.journal.begin(DELETE, list(doc_ids)), DELETE, list(doc_ids), sides)
    return existed


def _live_now(rt: Runtime, sides: Sequence[str]) -> list[str]:
    """`sides` as they are now, under the write lock: a finish may have retired the old index
    since they were probed."""
    from proxy.migration.finish import retired

    return [s for s in sides if not (s == "old" and retired(rt))]


def _catch_up(rt: Runtime, force: bool = False, unflushed: bool = False) -> int:
    """Apply every batch still in the journal, oldest first; returns how many. One that is not
    due for its retry yet (or fails again) stops here: JournalBehind, nothing later applied.
    Callers hold `rt.writing()`."""
    pending = rt.journal.pending(unflushed)
    for b in pending:
        wait = b.next_at - time.time()
        if wait > 0 and not force:
            raise JournalBehind(b, wait)
        sides = _live_now(rt, b.sides_left if b.sides_left is not None else live_sides(rt))
        vectors = {s: np.asarray(v, dtype=np.float32) for s, v in (b.vectors or {}).items()}
        try:
            if b.op == UPSERT:
                texts = [i["text"] for i in b.items]
                vectors.update(_embed(rt, [s for s in sides if s not in vectors], texts))
            _apply(rt, b.batch, b.op, b.items, sides, vectors)
        except WritePending as e:
            raise JournalBehind(b, rt.journal.pending()[0].next_at - time.time()) from e
        except Exception as e:  # e.g. the model down while re-embedding a crash's batch
            wait = rt.journal.retry_later(b.batch, _brief(e), sides)
            raise JournalBehind(b, wait) from e
        if b.attempts:
            log.warning(
                "write batch %d is in every index now, after %d retries", b.batch, b.attempts
            )
    return len(pending)


def replay_journal(rt: Runtime) -> int:
    """At start-up: apply every batch still in the journal, whatever its backoff, the ones
    applied but perhaps never flushed to disk too; returns how many. Callers hold
    `rt.writing()` (or run before serving starts). A fleet's journal is shared, and its
    indexes are servers that keep what they acknowledged: only the batches not applied yet
    (a process died mid-batch, or an index refused it) are replayed, not every other
    replica's recent writes (each would be embedded again)."""
    return _catch_up(rt, force=True, unflushed=not rt.state.shared)


def flush_writes(rt: Runtime) -> int:
    """Flush every index written since the last flush, then clear the journal's batches
    applied before it; returns how many. Blocking; takes the write lock (a batch applied
    during the flush stays in the journal). One flush for many writes: the embedded engine
    holds the GIL while it flushes, so a flush per write stalled every search beside it."""
    with rt.writing():
        if not rt.unflushed:
            return 0
        rt.unflushed = False
        for side in SIDES:
            if probe(rt.store(side)).exists:
                rt.store(side).flush()
        return rt.journal.forget_applied()


def retry_journal(rt: Runtime) -> bool:
    """The background retry: apply the journal's batches that are due; whether it is empty
    after. Blocking (run it off the event loop)."""
    status = rt.journal.status()
    if not status["pending"] or (status["next_retry_in_s"] or 0) > 0:
        return not status["pending"]
    with rt.writing():
        try:
            _catch_up(rt)
        except JournalBehind:
            return False
    return True


def _brief(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _apply(
    rt: Runtime,
    batch: int,
    op: str,
    items: list[Any],
    sides: Sequence[str],
    vectors: dict[str, np.ndarray] | None = None,
) -> None:
    """One batch to each of `sides` in turn; a side that fails keeps the batch in the journal
    with what is left (WritePending)."""
    stamp = now_iso()
    docs = [Doc(**i) for i in items] if op == UPSERT else []
    for n, side in enumerate(sides):
        try:
            store = rt.store(side)
            if op == UPSERT:
                assert vectors is not None
                vecs = vectors[side]
                store.upsert([make_point(rt, side, d, vecs[i], stamp) for i, d in enumerate(docs)])
            else:
                store.delete(items)
        except Exception as e:
            left = list(sides[n:])
            keep = (
                {s: np.asarray(vectors[s]).tolist() for s in left}
                if op == UPSERT and vectors
                else None
            )
            rt.journal.retry_later(batch, _brief(e), left, keep)
            log.error("write batch %d: the %s index refused it, retried later: %s", batch, side, e)
            retry = rt.settings.writes.retry_base_s
            raise WritePending(batch, sides[:n], left, _brief(e), retry) from e
    rt.journal.applied(batch)  # cleared by the next flush_writes
    rt.unflushed = True
    if rt.state.shared:  # other replicas' derived indexes (BM25 sidecars) follow the change
        rt.state.log_changes([d.doc_id for d in docs] if op == UPSERT else items)
    # Given text (or gone): no longer documents that can't be re-embedded.
    rt.state.forget_unembeddable([d.doc_id for d in docs] if op == UPSERT else items)
