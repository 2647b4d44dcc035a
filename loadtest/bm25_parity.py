"""BM25 through a Chroma deployment (the collection on a real `chroma run` server, BM25 in its
sidecar) against rank-bm25, the test oracle, on a BEIR dataset: mean top-10 overlap over its
queries; and the same on a plain edge shard, for comparison.

    python loadtest/bm25_parity.py --data /work/shared/data/scifact [--split test]

Every document is written through `ChromaStore.upsert` as `migrate start` seeds one (text,
metadata and BM25 vector; no dense vector yet: a placeholder embedding), so the sidecar is
filled by the same call that fills the collection. Both sides see the same tokens (qdrant's
tokeniser, stemmer and stopwords, read back one word at a time) and the same length prior (the
corpus's mean document length), so what is compared is the ranking: TF saturation, length
normalisation and IDF. Overlap per query = |top-10 of both| / |oracle's top-10 with a score
above 0|. The corpus is read from --data, never copied.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rank_bm25 import BM25Okapi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.document import Doc, text_sha256  # noqa: E402
from proxy.sparse import Bm25Encoder  # noqa: E402
from proxy.store import PointWrite, VectorStore  # noqa: E402

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


class Oracle:
    """rank-bm25 over the corpus, and the encoder with the same length prior."""

    def __init__(self, docs: Sequence[Doc]) -> None:
        self.docs = docs
        self.memo: dict[str, list[int]] = {}
        self.probe = Bm25Encoder()
        corpus = [tokens(self.probe, d.text, self.memo) for d in docs]
        self.enc = Bm25Encoder(avg_len=float(np.mean([len(t) for t in corpus])))
        self.bm25 = LuceneBM25(corpus, k1=1.2, b=0.75)

    def points(self) -> list[PointWrite]:
        return [
            PointWrite(
                doc_id=d.doc_id,
                text=d.text,
                text_sha256=text_sha256(d.text),
                metadata=d.metadata,
                sparse=self.enc.document(d.text),
            )
            for d in self.docs
        ]

    def overlap(self, store: VectorStore, query: str, k: int = 10) -> float | None:
        """Top-k overlap of the store's BM25 with the oracle's (None: no query token)."""
        q = tokens(self.probe, query, self.memo)
        if not q:
            return None
        scores = self.bm25.get_scores(q)
        want = {self.docs[j].doc_id for j in np.argsort(-scores)[:k] if scores[j] > 0}
        got = {d for d, _ in store.search_sparse(self.enc.query(query), k)}
        return len(want & got) / max(len(want), 1)


def main() -> None:
    from loadtest.servers import Chroma
    from proxy.beir import load_beir
    from proxy.config import IndexConfig
    from proxy.store import IndexInfo
    from proxy.store.chroma import ChromaStore
    from proxy.store.edge import EdgeStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a BEIR dataset directory")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    beir = load_beir(args.data, args.split)
    t0 = time.perf_counter()
    oracle = Oracle(beir.docs)
    print(
        f"{len(beir.docs)} documents, {len(beir.queries)} queries; oracle built in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = Chroma(Path(tmp) / "chroma").start()
        try:
            cfg = IndexConfig(backend="chroma", url=server.url, collection=f"b{uuid.uuid4().hex}")
            store = ChromaStore("new", cfg, Path(tmp) / "bm25")
            store.create(IndexInfo(dim=8, fingerprint="none@0", sparse=True))
            t0 = time.perf_counter()
            points = oracle.points()
            for i in range(0, len(points), 512):
                store.upsert(points[i : i + 512])
            print(f"written through ChromaStore.upsert in {time.perf_counter() - t0:.1f} s")
            assert store.sparse and store.bm25_divergence() == set()
            t0 = time.perf_counter()
            got = [oracle.overlap(store, q) for q in beir.queries.values()]
            overlaps = [o for o in got if o is not None]
            per_query = (time.perf_counter() - t0) / max(len(got), 1) * 1000
            print(
                f"mean top-10 overlap with rank-bm25: {np.mean(overlaps):.3f} over "
                f"{len(overlaps)} queries (min {min(overlaps):.2f}, "
                f"{sum(o == 1.0 for o in overlaps)} identical); {per_query:.1f} ms a query "
                "(oracle + store)"
            )
            store.drop()
            store.close()
        finally:
            server.stop()
        # the same corpus in a plain edge shard (a Qdrant-engine new index), for comparison
        edge = EdgeStore("new", Path(tmp) / "edge", IndexConfig(backend="edge", path="edge"))
        edge.create(IndexInfo(dim=8, fingerprint="none@0", sparse=True))
        edge.upsert(oracle.points())
        same = [oracle.overlap(edge, q) for q in beir.queries.values()]
        print(f"edge shard, same corpus: {np.mean([o for o in same if o is not None]):.3f}")
        edge.close()


if __name__ == "__main__":
    main()
