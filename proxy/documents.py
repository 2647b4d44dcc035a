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

from collections.abc import Sequence
from dataclasses import asdict

from proxy.availability import probe
from proxy.ingest import Doc, make_point, now_iso
from proxy.journal import DELETE, UPSERT
from proxy.runtime import SIDES, Runtime
from proxy.store import IndexUnavailable

IN_JOURNAL = (
    "; the batch is kept in the write journal and re-applied by the next write or at start-up"
)


def live_sides(rt: Runtime) -> list[str]:
    """The indexes that exist. Every index is asked first (one cheap call each): if one can't
    be reached, the write is refused (IndexUnavailable) before it touches any index."""
    return [s for s in SIDES if probe(rt.store(s)).exists]


def upsert_documents(rt: Runtime, docs: Sequence[Doc]) -> list[str]:
    """Write `docs` to every live index; returns the indexes written."""
    with rt.write_lock:
        replay_journal(rt)
        sides = live_sides(rt)
        if not sides:
            raise RuntimeError("no index exists yet: ingest into the old index first")
        batch = rt.journal.begin(UPSERT, [asdict(d) for d in docs])
        try:
            _upsert(rt, sides, docs)
        except IndexUnavailable as e:  # went down since asked: the journal finishes it
            raise IndexUnavailable(e.side, e.where, e.reason + IN_JOURNAL) from e
        rt.journal.done(batch)
    return sides


def delete_documents(rt: Runtime, doc_ids: Sequence[str]) -> dict[str, int]:
    """Delete from every live index; returns how many existed, per index."""
    with rt.write_lock:
        replay_journal(rt)
        sides = live_sides(rt)
        existed = {side: len(rt.store(side).retrieve(doc_ids, [])) for side in sides}
        batch = rt.journal.begin(DELETE, list(doc_ids))
        try:
            _delete(rt, sides, doc_ids)
        except IndexUnavailable as e:
            raise IndexUnavailable(e.side, e.where, e.reason + IN_JOURNAL) from e
        rt.journal.done(batch)
    return existed


def replay_journal(rt: Runtime) -> int:
    """Apply again every batch a crash left unfinished, oldest first; returns how many.
    Callers hold `rt.write_lock` (or run before serving starts)."""
    pending = rt.journal.pending()
    for batch, op, items in pending:
        sides = live_sides(rt)
        if op == UPSERT:
            _upsert(rt, sides, [Doc(**i) for i in items])
        else:
            _delete(rt, sides, items)
        rt.journal.done(batch)
    return len(pending)


def _upsert(rt: Runtime, sides: Sequence[str], docs: Sequence[Doc]) -> None:
    stamp = now_iso()
    for side in sides:
        vecs = rt.model(side).embed_documents([d.text for d in docs])
        rt.store(side).upsert([make_point(rt, side, d, vecs[i], stamp) for i, d in enumerate(docs)])
        rt.store(side).flush()


def _delete(rt: Runtime, sides: Sequence[str], doc_ids: Sequence[str]) -> None:
    for side in sides:
        rt.store(side).delete(doc_ids)
        rt.store(side).flush()
