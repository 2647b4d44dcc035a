"""BM25 as a sparse vector: the proxy tokenises, the store applies IDF.

Tokenisation (lowercasing, English stopwords and stemming, hashed token ids) is qdrant-edge's
own `Bm25` model, the same one Qdrant uses server-side, so both backends index identical
vectors. Documents get saturated, length-normalised term frequencies; queries get weight 1 per
unique token; `Modifier.IDF` on the index supplies IDF from live collection statistics, so
keyword search covers every document from the moment it is written, and stays incremental.
"""

from __future__ import annotations

import qdrant_edge as qe

from proxy.store import Sparse


class Bm25Encoder:
    def __init__(self, avg_len: float = 256.0, k1: float = 1.2, b: float = 0.75) -> None:
        self._model = qe.Bm25(qe.Bm25Config(k=k1, b=b, avg_len=avg_len, language="english"))

    def document(self, text: str) -> Sparse:
        v = self._model.embed_document(text)
        return Sparse(list(v.indices), list(v.values))

    def query(self, text: str) -> Sparse:
        v = self._model.embed_query(text)
        return Sparse(list(v.indices), list(v.values))
