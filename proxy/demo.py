"""The demo corpus: the Python language reference that ships with CPython (`pydoc_data.topics`,
PSF licence), split into passages on paragraph boundaries. No download, redistributable."""

from __future__ import annotations

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
