"""The demo corpus: the Python language reference that ships with CPython (`pydoc_data.topics`,
PSF licence), split into passages on paragraph boundaries. No download, redistributable."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.ingest import Doc


def python_reference(max_chars: int = 1200) -> list[Doc]:
    from pydoc_data.topics import topics

    docs: list[Doc] = []
    for topic, body in sorted(topics.items()):
        parts, cur = [], ""
        for para in body.split("\n\n"):
            para = para.strip()
            if not para:
                continue
            if cur and len(cur) + len(para) > max_chars:
                parts.append(cur)
                cur = ""
            cur = f"{cur}\n\n{para}" if cur else para
        if cur:
            parts.append(cur)
        for n, text in enumerate(parts):
            docs.append(Doc(f"{topic}#{n}", text, {"topic": topic, "part": n}))
    return docs


def write_eval_set(root: Path, docs: list[Doc], every: int = 12) -> Path:
    """A small labelled set over the demo corpus, in BEIR layout, for the cutover gate: the
    first line of every n-th passage (usually its heading) is a query judging that passage."""
    root.mkdir(parents=True, exist_ok=True)
    queries, qrels = [], []
    for i, d in enumerate(docs[::every]):
        first = next(line for line in d.text.splitlines() if line.strip())
        queries.append(json.dumps({"_id": f"q{i}", "text": first}))
        qrels.append(f"q{i}\t{d.doc_id}\t1")
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    (root / "corpus.jsonl").write_text("")  # the corpus is the demo's; the gate needs none
    return root
