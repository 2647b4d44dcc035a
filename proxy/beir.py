"""BEIR datasets: corpus.jsonl, queries.jsonl and qrels (`qrels.tsv` / `qrels-<split>.tsv`,
or the standard `qrels/<split>.tsv`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.document import Doc
from proxy.evaluation import parse_qrels, parse_queries
from proxy.ingest import read_jsonl


@dataclass
class Beir:
    docs: list[Doc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def qrels_file(root: str | Path, split: str) -> Path | None:
    """`qrels.tsv` (test) or `qrels-<split>.tsv`, else the standard `qrels/<split>.tsv`."""
    root = Path(root)
    for path in (
        root / ("qrels.tsv" if split == "test" else f"qrels-{split}.tsv"),
        root / "qrels" / f"{split}.tsv",
    ):
        if path.exists():
            return path
    return None


def load_beir(root: str | Path, split: str = "test", with_corpus: bool = True) -> Beir:
    root = Path(root)
    path = qrels_file(root, split)
    if path is None:
        raise FileNotFoundError(f"{root}: no qrels for split '{split}'")
    with path.open() as fh:
        qrels = parse_qrels(fh)
    with (root / "queries.jsonl").open("rb") as fh:
        queries = {q: t for q, t in parse_queries(fh).items() if q in qrels}
    qrels = {q: r for q, r in qrels.items() if q in queries}
    docs = list(read_jsonl(root / "corpus.jsonl")) if with_corpus else []
    return Beir(docs, queries, qrels)
