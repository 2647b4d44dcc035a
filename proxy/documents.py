"""Document writes through the proxy: applied to every live index with that index's own model
(dual write), BM25 kept current, durable (flushed) before the call returns.

Writing the new index embeds the new text with the new model right away, so an edit never
leaves a vector of an older text behind; a re-embed of the old text already in flight is then
refused by its conditional write (it names the text hash it was computed from).
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.ingest import Doc, make_point, now_iso
from proxy.runtime import SIDES, Runtime


def live_sides(rt: Runtime) -> list[str]:
    return [s for s in SIDES if rt.store(s).info() is not None]


def upsert_documents(rt: Runtime, docs: Sequence[Doc]) -> list[str]:
    """Write `docs` to every live index; returns the indexes written."""
    sides = live_sides(rt)
    if not sides:
        raise RuntimeError("no index exists yet: ingest into the old index first")
    stamp = now_iso()
    for side in sides:
        vecs = rt.model(side).embed_documents([d.text for d in docs])
        rt.store(side).upsert([make_point(rt, side, d, vecs[i], stamp) for i, d in enumerate(docs)])
        rt.store(side).flush()
    return sides


def delete_documents(rt: Runtime, doc_ids: Sequence[str]) -> dict[str, int]:
    """Delete from every live index; returns how many existed, per index."""
    out = {}
    for side in live_sides(rt):
        store = rt.store(side)
        out[side] = len(store.retrieve(doc_ids, []))
        store.delete(doc_ids)
        store.flush()
    return out
