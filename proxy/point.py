"""A point: the one way a document becomes what an index stores."""

from __future__ import annotations

import numpy as np

from proxy.clock import now_iso
from proxy.document import Doc
from proxy.migration.canary import refuse_drifted
from proxy.runtime import Runtime
from proxy.store import PointWrite


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
