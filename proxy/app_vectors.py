"""Vectors an app computed itself and sends with its text (LangChain's `add_texts`, LlamaIndex's
`insert`, a qdrant-client upsert): checked to be the app's model's (`vector_clients.app_model`:
the old one, until the app moves to the new one).

A vector crossfade returned from `/v1/embeddings` is known by its text (proxy/remembered.py);
any other is compared with the model's own embedding of the text it came with, the way
adopting a collection checks its stored vectors. That model's index then takes the app's
vector, every other index its own model's vector of the text. A vector of any other model is
the bilingual write the guard exists for: refused (409), nothing written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from proxy.adapter import unit
from proxy.errors import Conflict
from proxy.remembered import Remembered


class ForeignVector(Conflict):
    """A written vector that is no model's of the migration (409): the bilingual write."""


@dataclass(frozen=True)
class Model:
    """What the check needs of one side's model: its name, dimension and document embedder."""

    side: str
    name: str
    dim: int
    embed: Callable[[list[str]], np.ndarray]


def check_app_vectors(
    texts: Sequence[str],
    vectors: Sequence[np.ndarray],
    model: Model,
    recall: Callable[[np.ndarray], Remembered | None],
    min_cosine: float,
    where: Sequence[str],
) -> None:
    """Raise ForeignVector naming the first vector that is not `model`'s embedding of its
    text (a vector crossfade returned from /v1/embeddings for that text and model needs no
    check; the others are compared with the model's own embedding, in one batch)."""
    todo = []
    for i, v in enumerate(vectors):
        known = recall(v)
        if known is None or known.text != texts[i] or known.side != model.side:
            todo.append(i)
    for i in todo:
        if len(vectors[i]) != model.dim:
            raise ForeignVector(
                f"{where[i]}: a vector of {len(vectors[i])} dimensions; this collection's "
                f"model, {model.name}, gives {model.dim}. {MIXING}"
            )
    if not todo:
        return
    mine = unit(np.asarray(model.embed([texts[i] for i in todo]), dtype=np.float32))
    theirs = unit(np.stack([np.asarray(vectors[i], dtype=np.float32) for i in todo]))
    for i, c in zip(todo, (mine * theirs).sum(axis=1), strict=True):
        if c < min_cosine:
            raise ForeignVector(
                f"{where[i]}: the vector is not {model.name}'s embedding of its text (cosine "
                f"{c:.3f}, under vector_clients.write_min_cosine {min_cosine}). {MIXING}"
            )


MIXING = (
    "Writing it would put two models' vectors in one index (a bilingual index, where search "
    "quietly fails): embed with that model, or send the text as a Document and let crossfade "
    "embed it"
)
