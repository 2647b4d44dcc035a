"""Document writes through the proxy: applied to every live index with that index's own model
(dual write), BM25 kept current, durable (flushed) before the call returns.

Writing the new index embeds the new text with the new model right away, so an edit never
leaves a vector of an older text behind; a re-embed of the old text already in flight is then
refused by its conditional write (it names the text hash it was computed from).

Every batch goes through the write-ahead journal (proxy/journal.py) and writes run one at a
time: two batches touching one document can't land in opposite orders in the two indexes, and
a batch cut short by a crash is applied again, whole, before the next write or at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict
from typing import Any

from proxy.availability import probe
from proxy.ingest import CorpusError, Doc, make_point, now_iso
from proxy.journal import DELETE, UPSERT
from proxy.migration.canary import refuse_drifted
from proxy.runtime import SIDES, Runtime
from proxy.store import IndexUnavailable

log = logging.getLogger("crossfade")
IN_JOURNAL = (
    "; the batch is kept in the write journal and re-applied by the next write or at start-up"
)


def live_sides(rt: Runtime, doc_ids: Sequence[str] = ()) -> list[str]:
    """The indexes that exist and are not retired. Every index is asked first (one cheap
    call each): if one can't be reached, the write is refused (IndexUnavailable) before it
    touches any index; so is an id that one of them can't key a point by (CorpusError)."""
    from proxy.migration.finish import retired

    gone = {"old"} if retired(rt) else set()  # after `migrate finish`: no more dual writes
    sides = [s for s in SIDES if s not in gone and probe(rt.store(s)).exists]
    for side in sides:  # ids an adopted collection can't key a point by: refused up front
        check_ids = getattr(rt.store(side), "check_ids", None)
        if check_ids is not None:
            try:
                check_ids(doc_ids)
            except ValueError as e:
                raise CorpusError(str(e)) from None
    return sides


def upsert_documents(rt: Runtime, docs: Sequence[Doc]) -> list[str]:
    """Write `docs` to every live index; returns the indexes written."""
    with rt.write_lock:
        replay_journal(rt)
        sides = live_sides(rt, [d.doc_id for d in docs])
        if not sides:
            raise RuntimeError("no index exists yet: ingest into the old index first")
        for side in sides:  # refused whole, before the journal: no index half-written
            refuse_drifted(rt, side)
        items = [asdict(d) for d in docs]
        _apply(rt, rt.journal.begin(UPSERT, items), UPSERT, items, sides)
    return sides


def delete_documents(rt: Runtime, doc_ids: Sequence[str]) -> dict[str, int]:
    """Delete from every live index; returns how many existed, per index."""
    with rt.write_lock:
        replay_journal(rt)
        sides = live_sides(rt)
        existed = {side: len(rt.store(side).retrieve(doc_ids, [])) for side in sides}
        _apply(rt, rt.journal.begin(DELETE, list(doc_ids)), DELETE, list(doc_ids), sides)
    return existed


def replay_journal(rt: Runtime) -> int:
    """Apply again every batch a crash left unfinished, oldest first; returns how many.
    Callers hold `rt.write_lock` (or run before serving starts). An outage stops the replay
    (IndexUnavailable: tried again later); a batch that fails otherwise is set aside."""
    pending = rt.journal.pending()
    for batch, op, items in pending:
        with suppress(WriteFailed):
            _apply(rt, batch, op, items, live_sides(rt))
    return len(pending)


class WriteFailed(RuntimeError):
    """A batch the engine refused for a reason other than an outage; set aside in the journal."""


def _apply(rt: Runtime, batch: int, op: str, items: list[Any], sides: Sequence[str]) -> None:
    try:
        if op == UPSERT:
            _upsert(rt, sides, [Doc(**i) for i in items])
        else:
            _delete(rt, sides, items)
    except IndexUnavailable as e:  # an outage: the journal finishes the batch later
        raise IndexUnavailable(e.side, e.where, e.reason + IN_JOURNAL) from e
    except Exception as e:
        # Replaying it would fail the same way and block every later write: set it aside.
        rt.journal.fail(batch, repr(e))
        log.error("document write batch %d set aside in the journal: %r", batch, e)
        raise WriteFailed(f"the write failed and was set aside ({e})") from e
    rt.journal.done(batch)


def _upsert(rt: Runtime, sides: Sequence[str], docs: Sequence[Doc]) -> None:
    stamp = now_iso()
    for side in sides:
        model = rt.model(side)
        model.configure_thread()  # writes run on pool threads: pin the model's thread count
        vecs = model.embed_documents([d.text for d in docs])
        rt.store(side).upsert([make_point(rt, side, d, vecs[i], stamp) for i, d in enumerate(docs)])
        rt.store(side).flush()


def _delete(rt: Runtime, sides: Sequence[str], doc_ids: Sequence[str]) -> None:
    for side in sides:
        rt.store(side).delete(doc_ids)
        rt.store(side).flush()
