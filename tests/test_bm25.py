"""BM25 in the store (sparse vectors + Modifier.IDF) against rank_bm25, the reference oracle.

Both sides see the same tokens (qdrant's own tokeniser, stemmer and stopwords, read back one
word at a time), so what is compared is the ranking function: TF saturation, length
normalisation and IDF from live collection statistics. Both engines are checked."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from proxy.config import IndexConfig
from proxy.demo import python_reference
from proxy.document import text_sha256
from proxy.sparse import Bm25Encoder
from proxy.store import IndexInfo, PointWrite, VectorStore
from proxy.store.edge import EdgeStore
from proxy.store.server import ServerStore

WORD = re.compile(r"\w+")


class LuceneBM25(BM25Okapi):
    """rank_bm25's Okapi scoring with the IDF Lucene and Qdrant use, ln(1 + (N-n+.5)/(n+.5)),
    which never goes negative (Okapi's own floors common terms at epsilon * mean idf)."""

    def _calc_idf(self, nd: dict) -> None:  # type: ignore[override]
        self.idf = {
            w: math.log(1 + (self.corpus_size - n + 0.5) / (n + 0.5)) for w, n in nd.items()
        }


def tokens(enc: Bm25Encoder, text: str, memo: dict[str, list[int]]) -> list[int]:
    out: list[int] = []
    for w in WORD.findall(text):
        if w not in memo:
            memo[w] = enc.query(w).indices
        out.extend(memo[w])
    return out


@pytest.mark.parametrize("backend", ["edge", "qdrant-local"])
def test_top10_overlap_with_rank_bm25(tmp_path: Path, backend: str) -> None:
    docs = python_reference()
    memo: dict[str, list[int]] = {}
    probe = Bm25Encoder()
    corpus_tokens = [tokens(probe, d.text, memo) for d in docs]
    avg_len = float(np.mean([len(t) for t in corpus_tokens]))
    enc = Bm25Encoder(avg_len=avg_len)  # the same length prior rank_bm25 computes

    store: VectorStore
    if backend == "edge":
        store = EdgeStore("b", tmp_path / "s", IndexConfig(backend="edge", path="s"))
    else:
        store = ServerStore("b", IndexConfig(backend="qdrant", url=":memory:", collection="b"))
    store.create(IndexInfo(dim=4, fingerprint="none@0", sparse=True))
    store.upsert(
        [
            PointWrite(
                doc_id=d.doc_id,
                text=d.text,
                text_sha256=text_sha256(d.text),
                sparse=enc.document(d.text),
            )
            for d in docs
        ]
    )

    oracle = LuceneBM25(corpus_tokens, k1=1.2, b=0.75)
    rng = np.random.default_rng(7)
    overlaps = []
    for i in rng.choice(len(docs), size=40, replace=False):
        # a query made of a few distinctive words of a random passage
        words = [w for w in WORD.findall(docs[i].text) if len(w) > 4][:6]
        query = " ".join(words)
        q_tokens = tokens(probe, query, memo)
        if not q_tokens:
            continue
        scores = oracle.get_scores(q_tokens)
        want = {docs[j].doc_id for j in np.argsort(-scores)[:10] if scores[j] > 0}
        got = {d for d, _ in store.search_sparse(enc.query(query), 10)}
        overlaps.append(len(want & got) / max(len(want), 1))
    store.close()
    assert len(overlaps) >= 30
    print(f"mean top-10 overlap {np.mean(overlaps):.3f}")
    assert float(np.mean(overlaps)) >= 0.9, overlaps
