"""A text source (JSONL of {id, text}) for a collection without stored text: looked up by id
through an on-disk index of line offsets, never loaded whole into memory."""

from __future__ import annotations

import json
import random
import string
import tracemalloc
from pathlib import Path

from proxy.store.texts import TextSource


def write_lines(path: Path, n: int, size: int = 2000) -> dict[str, str]:
    rng = random.Random(0)
    texts = {str(i): "".join(rng.choices(string.ascii_letters + " ", k=size)) for i in range(n)}
    with path.open("w") as fh:
        for i, t in texts.items():
            fh.write(json.dumps({"id": int(i), "text": t}) + "\n")
        fh.write("\n")  # a blank line is skipped
        fh.write(json.dumps({"_id": "b", "title": "Title", "text": "body"}) + "\n")
        fh.write(json.dumps({"id": "0", "text": "the later line wins"}) + "\n")
    texts.update({"b": "Title\nbody", "0": "the later line wins"})
    return texts


def test_lookups_by_id_without_loading_the_file(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    texts = write_lines(path, 3000)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        source = TextSource(path, tmp_path / "cache")
        got = {d: source[d] for d in random.Random(1).sample(sorted(texts), 200)}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == {d: texts[d] for d in got}
    assert peak < size / 4, (peak, size)  # a dict of the texts would hold them all
    assert len(source) == len(texts) and source["b"] == "Title\nbody"
    assert "2999" in source and "3000" not in source and source.get("nope") is None
    assert source.missing(["1", "x", "2", "y"]) == ["x", "y"]


def test_index_built_once_per_version_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    write_lines(path, 10, size=20)
    first = TextSource(path, tmp_path / "cache")
    built = first.index.stat().st_mtime_ns
    again = TextSource(path, tmp_path / "cache")
    assert again.index == first.index and again.index.stat().st_mtime_ns == built
    with path.open("a") as fh:
        fh.write(json.dumps({"id": 99, "text": "added"}) + "\n")
    changed = TextSource(path, tmp_path / "cache")
    assert changed.index != first.index and changed["99"] == "added"
    assert "99" not in first  # the old index describes the old file


def test_a_bad_line_gives_its_document_no_text_and_is_named(tmp_path: Path) -> None:
    """One bad line used to refuse the whole file; its document now has no text (counted and
    listed by the migration), and the line's fault is kept to say why."""
    path = tmp_path / "texts.jsonl"
    path.write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": 5}\nnot json\n')
    src = TextSource(path, tmp_path / "cache")
    assert src["1"] == "fine" and src.get("2") is None and "2" not in src and len(src) == 1
    assert src.problem("2") == f"{path}:2: 'text' must be a string" and src.problem("1") is None
    assert len(src.bad_lines()) == 2 and "texts.jsonl:3: not JSON" in src.bad_lines()[1]
    assert src.missing(["1", "2", "3"]) == ["2", "3"]
