"""(placeholder until the embeddings branch lands) Texts behind vectors crossfade returned."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Remembered:
    text: str
    side: str
    fingerprint: str


class RememberedTexts:
    def __init__(self, max_entries: int, ttl_s: float, max_chars: int) -> None:
        self._d: dict[bytes, Remembered] = {}

    def remember(self, side: str, fingerprint: str, texts: list[str], vectors: np.ndarray) -> None:
        for t, v in zip(texts, vectors, strict=True):
            self._d[np.asarray(v, dtype=np.float32).tobytes()] = Remembered(t, side, fingerprint)

    def recall(self, vector: object) -> Remembered | None:
        return self._d.get(np.asarray(vector, dtype=np.float32).tobytes())
