"""BM25 in the store (sparse vectors + Modifier.IDF) against rank_bm25, the reference oracle.

Both sides see the same tokens (qdrant's own tokeniser, stemmer and stopwords, read back one
word at a time), so what is compared is the ranking function: TF saturation, length
normalisation and IDF from live collection statistics. Every engine is checked, Chroma's
through its BM25 sidecar. The oracle is loadtest/bm25_parity.py's (its SciFact figure:
docs/measurements/quality.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtest.bm25_parity import WORD, Oracle
from proxy.config import IndexConfig
from proxy.demo import python_reference
from proxy.store import IndexInfo, VectorStore
from proxy.store.chroma import ChromaStore
from proxy.store.edge import EdgeStore
from proxy.store.server import ServerStore


@pytest.mark.parametrize("backend", ["edge", "qdrant-local", "chroma-local"])
def test_top10_overlap_with_rank_bm25(tmp_path: Path, backend: str) -> None:
    docs = python_reference()
    oracle = Oracle(docs)

    store: VectorStore
    if backend == "edge":
        store = EdgeStore("b", tmp_path / "s", IndexConfig(backend="edge", path="s"))
    elif backend == "chroma-local":  # BM25 in the collection's sidecar
        cfg = IndexConfig(backend="chroma", url=f"local:{tmp_path / 'c'}", collection="b00")
        store = ChromaStore("b", cfg, tmp_path / "bm25")
    else:
        store = ServerStore("b", IndexConfig(backend="qdrant", url=":memory:", collection="b"))
    store.create(IndexInfo(dim=4, fingerprint="none@0", sparse=True))
    store.upsert(oracle.points())

    rng = np.random.default_rng(7)
    overlaps = []
    for i in rng.choice(len(docs), size=40, replace=False):
        # a query made of a few distinctive words of a random passage
        words = [w for w in WORD.findall(docs[i].text) if len(w) > 4][:6]
        o = oracle.overlap(store, " ".join(words))
        if o is not None:
            overlaps.append(o)
    store.close()
    assert len(overlaps) >= 30
    print(f"mean top-10 overlap {np.mean(overlaps):.3f}")
    assert float(np.mean(overlaps)) >= 0.9, overlaps
