"""BM25 sidecars: an index that keeps BM25 beside itself (a Chroma collection's, see
proxy/store/chroma.py) checked against that index by `crossfade verify`, and mended from it
with `--repair`: the divergent ids rewritten, or a missing sidecar rebuilt whole. The index is
the source of truth (it holds the texts); the sidecar is derived from it, so a repair never
loses a document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.runtime import SIDES, Runtime
from proxy.store import Sparse, VectorStore

SHOWN = 20  # ids listed in a report


def check_sidecar(
    store: VectorStore, document: Callable[[str], Sparse], repair: bool = False
) -> dict[str, Any]:
    """`missing`: why the sidecar can't be opened (None: it can); `divergent` and `ids`: the
    doc ids where it disagrees with the index, as found (None while it is missing); with
    `repair`, `rebuilt` (a missing sidecar built anew), `repaired` (ids written) and `left`
    (still divergent after the repair: 0 unless someone wrote meanwhile)."""
    out: dict[str, Any] = {"missing": store.sidecar_missing(), "divergent": None, "ids": []}
    if out["missing"] is not None and not repair:
        return out
    if out["missing"] is not None:
        out["rebuilt"], out["repaired"] = True, store.repair_bm25(document)
    found = sorted(store.bm25_divergence())
    out["divergent"], out["ids"] = len(found), found[:SHOWN]
    if repair:
        if found:
            out["repaired"] = out.get("repaired", 0) + store.repair_bm25(document, found)
        out.setdefault("rebuilt", False)
        out.setdefault("repaired", 0)
        out["left"] = len(store.bm25_divergence()) if found else 0
    return out


def check_sidecars(rt: Runtime, repair: bool = False) -> dict[str, dict[str, Any]]:
    """Per side whose index keeps a BM25 sidecar: `check_sidecar`."""
    out: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        store = rt.store(side)
        if store.info() is not None and store.bm25_sidecar:  # (the binding read first)
            out[side] = check_sidecar(store, rt.bm25.document, repair)
    return out


def sidecar_problems(report: dict[str, dict[str, Any]]) -> list[str]:
    """What `crossfade verify` lists as problems, with the way out."""
    problems = []
    for side, r in report.items():
        if r["missing"] is not None and not r.get("rebuilt"):
            problems.append(
                f"the {side} index's BM25 sidecar can't be opened: {r['missing']}: "
                "`crossfade verify --repair` rebuilds it from the collection (proxy stopped)"
            )
        elif r.get("left"):
            problems.append(
                f"{r['left']} documents of the {side} index still differ from its BM25 "
                "sidecar after the repair (written meanwhile? stop the proxy and repair again)"
            )
        elif r["divergent"] and "repaired" not in r:
            problems.append(
                f"{r['divergent']} documents differ between the {side} index and its BM25 "
                f"sidecar, e.g. {r['ids'][:3]}: `crossfade verify --repair` rewrites them"
            )
    return problems


class SidecarFollower:
    """A fleet replica's BM25 sidecars follow every document write, wherever it was made.

    A sidecar is this process's own data (under its data_dir), derived from the collection;
    another replica's writes reach the collection, not it. So every write names its documents
    in the shared state's change log (proxy/writes.py), and each replica rewrites those
    records of its sidecars from the collection (`repair_bm25`, idempotent: its own writes come
    back too, harmlessly). A replica whose sidecar is missing or whose position is unknown (a
    new replica, another data_dir) notes where the log stands, rebuilds the sidecar from the
    collection, then follows from the noted position: a write made during the rebuild is
    either in the collection it scanned or in the log after that position. So does one whose
    position the log was pruned past (`state.changes_kept`)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def stores(self) -> list[VectorStore]:
        out = []
        for side in SIDES:
            store = self.rt.store(side)
            if store.info() is not None and store.bm25_sidecar:
                out.append(store)
        return out

    def catch_up(self) -> int:
        """Rebuild where needed, then apply the log; how many documents were rewritten
        (blocking)."""
        state, document = self.rt.state, self.rt.bm25.document
        n = 0
        for store in self.stores():
            at = store.sidecar_position()
            changes = state.changes_since(at) if at is not None else None
            # None: no position; not complete: pruned past it, what it missed is gone
            if changes is None or not changes.complete:
                at = state.changes_since(0, limit=0).seq
                n += store.repair_bm25(document)
                store.set_sidecar_position(at)
                changes = state.changes_since(at)
            while True:
                if changes.doc_ids:
                    n += store.repair_bm25(document, changes.doc_ids)
                if changes.seq == at:
                    break
                store.set_sidecar_position(changes.seq)
                at = changes.seq
                changes = state.changes_since(at)
        return n
