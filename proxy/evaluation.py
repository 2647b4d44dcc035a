"""Retrieval quality metrics and BEIR qrels/queries parsing. Pure: no I/O beyond parsing text.

Binary or graded relevance; nDCG uses the standard log2 discount with gain = relevance grade
(BEIR/pytrec_eval convention; grades below 1 gain nothing), ideal DCG from every judged
document, including those the corpus lacks (pytrec_eval never sees the corpus). Every judged
query counts in the mean, also one whose relevant documents are all missing (it scores 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import orjson

Qrels = Mapping[str, Mapping[str, int]]  # query id -> doc id -> grade


def ndcg_at_k(ranked: Sequence[str], rel: Mapping[str, int], k: int = 10) -> float:
    dcg = sum(max(rel.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], rel: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in rel.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], rel: Mapping[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if rel.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def score_run(run: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """Mean of each metric over the judged queries (a query missing from `run` scores 0)."""
    totals = dict.fromkeys(METRICS, 0.0)
    for qid, rel in qrels.items():
        ranked = run.get(qid, ())
        totals["ndcg@10"] += ndcg_at_k(ranked, rel, 10)
        totals["recall@10"] += recall_at_k(ranked, rel, 10)
        totals["recall@100"] += recall_at_k(ranked, rel, 100)
        totals["mrr@10"] += mrr_at_k(ranked, rel, 10)
    n = max(len(qrels), 1)
    return {m: round(v / n, 4) for m, v in totals.items()}


def parse_qrels(lines: Iterable[str]) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (`query-id  corpus-id  score`, header optional)."""
    out: dict[str, dict[str, int]] = {}
    for line in lines:
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0] == "query-id":
            continue
        out.setdefault(parts[0], {})[parts[1]] = int(float(parts[2]))
    return out


def parse_queries(lines: Iterable[bytes | str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        if line.strip():
            obj = orjson.loads(line)
            out[str(obj["_id"])] = obj["text"]
    return out
