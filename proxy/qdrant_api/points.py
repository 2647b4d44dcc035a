"""A point an app upserts, as crossfade writes it: its text, and the vector it computed itself
if it sent one (LangChain, LlamaIndex and plain qdrant-client send vectors; qdrant-client with
cloud inference sends a Document, text that crossfade embeds with each index's model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from qdrant_client.http import models as qm

from proxy.qdrant_api import Unsupported
from proxy.qdrant_api.layout import AppLayout


@dataclass(frozen=True)
class PointIn:
    text: str
    vector: np.ndarray | None  # the app's own, to be placed (proxy/app_vectors.py)


def point_in(
    vector: Any, payload: dict[str, Any] | None, layout: AppLayout, vector_name: str, where: str
) -> PointIn:
    """The text of a point's Document (alone, or under one or more vector names), or the app's
    vector under `vector_name` (the adopted collection's: '' = unnamed) with the text its
    payload carries."""
    docs = list(vector.values()) if isinstance(vector, dict) else [vector]
    if any(isinstance(d, qm.Document) for d in docs):
        texts = {d.text for d in docs if isinstance(d, qm.Document)}
        if len(texts) != 1 or not all(isinstance(d, qm.Document) for d in docs):
            raise Unsupported(
                f"{where}: the vector must be a Document ({{'text': ..., 'model': ...}}), one "
                "text, or the app's own vector: crossfade embeds the text with each index's model"
            )
        return PointIn(texts.pop(), None)
    if isinstance(vector, dict):
        if set(vector) != {vector_name}:
            names = ", ".join(repr(k) for k in vector) or "none"
            raise Unsupported(
                f"{where}: vectors named {names}; this collection's vector is {vector_name!r}"
            )
        vector = vector[vector_name]
    elif vector_name != "":
        raise Unsupported(f"{where}: an unnamed vector; this collection's is {vector_name!r}")
    if (
        not isinstance(vector, list)
        or not vector
        or not all(isinstance(x, (int, float)) for x in vector)
    ):
        raise Unsupported(f"{where}: the vector must be a dense list of numbers or a Document")
    with np.errstate(over="ignore"):
        vec = np.asarray(vector, dtype=np.float32)
    if not np.isfinite(vec).all():
        raise Unsupported(f"{where}: the vector holds NaN, infinite or out-of-range values")
    text = layout.text_in(payload)
    if not text or not text.strip():
        raise Unsupported(
            f"{where}: a vector without its text (looked for at {layout.text_where()}): "
            "crossfade needs every document's text to embed it with the new model"
        )
    return PointIn(text, vec)
