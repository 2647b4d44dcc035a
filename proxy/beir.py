"""BEIR datasets: corpus.jsonl, queries.jsonl and qrels (`qrels.tsv` / `qrels-<split>.tsv`,
or the standard `qrels/<split>.tsv`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.evaluation import parse_qrels, parse_queries
from proxy.ingest import Doc, read_jsonl


@dataclass
class Beir:
    docs: list[Doc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(root: str | Path, split: str = "test", with_corpus: bool = True) -> Beir:
    root = Path(root)
    qrels_file = root / ("qrels.tsv" if split == "test" else f"qrels-{split}.tsv")
    if not qrels_file.exists():  # the standard BEIR layout
        qrels_file = root / "qrels" / f"{split}.tsv"
    with qrels_file.open() as fh:
        qrels = parse_qrels(fh)
    with (root / "queries.jsonl").open("rb") as fh:
        queries = {q: t for q, t in parse_queries(fh).items() if q in qrels}
    qrels = {q: r for q, r in qrels.items() if q in queries}
    docs = list(read_jsonl(root / "corpus.jsonl")) if with_corpus else []
    return Beir(docs, queries, qrels)
