"""Before a migration of an adopted collection writes anything: is the text there, and is the
configured old model the one that wrote the vectors?

A wrong old model is the bilingual failure at the very start: old-model queries over vectors
of another model, with nothing throwing. So a sample of stored texts is re-embedded with the
configured old model and compared with the stored vectors. Most of them must match; a
collection where some match and some don't already holds two models and is reported as such.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from proxy.runtime import Runtime
from proxy.store import AdoptionRefused, IndexInfo, VectorStore

__all__ = ["AdoptionRefused", "adopt_old", "check_identity", "check_texts"]


def check_texts(rt: Runtime, old: VectorStore) -> dict[str, Any]:
    """Without the text nothing can be re-embedded: refuse a collection without stored text
    unless a text source is given, or a text source with a text for none of its points. Some
    points without one are counted (`migrate start` lists them: they block the gate until
    given text or excluded)."""
    adopt = rt.settings.indexes.old.adopt
    assert adopt is not None
    if old.texts is None:
        where, held = old.stored_text()
        if not held:
            raise AdoptionRefused(
                f"collection {old.collection!r} stores no text {where}: without the text "
                "nothing can be re-embedded. Give the texts as JSONL of {id, text} in "
                "indexes.old.adopt.text_source"
            )
        return {"text": f"stored {where}"}
    missing: list[str] = []
    points = 0
    for ids in old.ids():
        points += len(ids)
        missing.extend(old.texts.missing(ids))
    if points and len(missing) == points:
        raise AdoptionRefused(
            f"none of the {points} points has a text in {adopt.text_source}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    out: dict[str, Any] = {
        "text": f"from {adopt.text_source}",
        "points_with_text": points - len(missing),
    }
    if missing:
        out["points_without_text"] = len(missing)
    if bad := old.texts.bad_lines():
        out["bad_lines"] = {"count": len(bad), "first": bad[:5]}
    return out


def check_identity(rt: Runtime, old: VectorStore) -> dict[str, Any]:
    """Re-embed a sample of stored texts with the configured old model; compare."""
    adopt = rt.settings.indexes.old.adopt
    assert adopt is not None
    model = rt.model("old")
    fp = model.fingerprint
    sample = [(d, t, v) for d, t, v in old.sample(adopt.identity_sample) if t]
    if not sample:
        raise AdoptionRefused(f"collection {old.collection!r}: no point with a vector and a text")
    dims = {v.shape[0] for _, _, v in sample}
    if dims != {fp.dim}:
        raise AdoptionRefused(
            f"the stored vectors have {sorted(dims)} dimensions, the configured old model "
            f"{fp.id} gives {fp.dim}: it is not the model that wrote this collection"
        )
    fresh = model.embed_documents([t for _, t, _ in sample])
    stored = np.stack([v for _, _, v in sample])
    stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
    fresh = fresh / np.maximum(np.linalg.norm(fresh, axis=1, keepdims=True), 1e-12)
    cos = np.sum(stored * fresh, axis=1)
    ok = cos >= adopt.identity_min_cosine
    report = {
        "sampled": len(sample),
        "matching": int(ok.sum()),
        "median_cosine": round(float(np.median(cos)), 4),
        "min_cosine": round(float(cos.min()), 4),
        "model": fp.id,
    }
    need = f"need >= {adopt.identity_min_cosine:g}"
    if not ok.any():
        raise AdoptionRefused(
            f"wrong old model: re-embedding {len(sample)} stored texts with {fp.id} gives "
            f"median cosine {report['median_cosine']} to the stored vectors ({need}); "
            "configure the model that wrote this collection"
        )
    if not ok.all():
        bad = int((~ok).sum())
        bad_ids = [d for (d, _, _), good in zip(sample, ok, strict=True) if not good]
        raise AdoptionRefused(
            f"the collection is already bilingual: {bad} of {len(sample)} sampled vectors "
            f"({100 * bad / len(sample):.0f}%) do not match {fp.id} (median cosine "
            f"{float(np.median(cos[~ok])):.4f}, {need}) while {int(ok.sum())} do (median "
            f"{float(np.median(cos[ok])):.4f}); e.g. {', '.join(bad_ids[:3])}"
        )
    return report


def adopt_old(rt: Runtime) -> dict[str, Any] | None:
    """For an adopted old collection: the checks, then the binding (our file, not theirs).
    None when the old index is crossfade's own."""
    old = rt.store("old")
    if not old.adopted:
        return None
    found = old.adoption_checks(rt.settings.models.old)
    report = {**check_texts(rt, old), **found, "identity": check_identity(rt, old)}
    fp = rt.model("old").fingerprint
    want = IndexInfo(dim=fp.dim, fingerprint=fp.id, sparse=False)
    have = old.info()
    if have is not None and have != want:
        raise AdoptionRefused(f"collection {old.collection!r} was adopted bound to {have}")
    old.bind(want)
    return report
