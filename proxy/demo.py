"""The demo corpus: the Python language reference that ships with CPython (`pydoc_data.topics`,
PSF licence), split into passages on paragraph boundaries. No download, redistributable."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.document import Doc


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


QUESTIONS = Path(__file__).resolve().parents[1] / "config" / "demo-eval" / "questions.tsv"


def write_eval_set(root: Path, docs: list[Doc], questions: Path = QUESTIONS) -> Path:
    """The demo's labelled set in BEIR layout, for the cutover gate: hand-written questions,
    each judging every passage of its reference topics as relevant."""
    by_topic: dict[str, list[str]] = {}
    for d in docs:
        by_topic.setdefault(str(d.metadata["topic"]), []).append(d.doc_id)
    root.mkdir(parents=True, exist_ok=True)
    queries, qrels = [], []
    lines = [x for x in questions.read_text().splitlines() if x.strip() and not x.startswith("#")]
    for i, line in enumerate(lines):
        text, topics = line.split("\t")
        judged = [d for t in topics.split() for d in by_topic.get(t, [])]
        if not judged:
            continue
        queries.append(json.dumps({"_id": f"q{i}", "text": text}))
        qrels.extend(f"q{i}\t{d}\t1" for d in judged)
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    (root / "corpus.jsonl").write_text("")  # the corpus is the demo's; the gate needs none
    return root
