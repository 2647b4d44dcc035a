"""Ingest (both line formats, resumable, bound to one model) and migration seeding, on real
models and the embedded engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from proxy.cli import main
from proxy.document import CorpusError
from proxy.ingest import ingest, read_jsonl
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.helpers import cli_config, demo_settings, free_port

DOCS = [
    {
        "id": "p1",
        "text": "A list comprehension builds a list from an iterable.",
        "metadata": {"t": "a"},
    },
    {"id": 2, "text": "The with statement wraps a block in a context manager."},
    {"_id": "b3", "title": "Generators", "text": "yield suspends a function and resumes it later."},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_both_formats_and_payload(runtime: Runtime, tmp_path: Path) -> None:
    docs = list(read_jsonl(write_jsonl(tmp_path / "c.jsonl", DOCS)))
    assert [d.doc_id for d in docs] == ["p1", "2", "b3"]
    assert docs[2].text.startswith("Generators\n") and docs[2].metadata == {"title": "Generators"}
    out = ingest(runtime, "old", docs, progress=False)
    assert out == {"written": 3, "skipped": 0, "total": 3}
    p = runtime.store("old").retrieve(["p1"])["p1"]
    assert p["model_fingerprint"] == runtime.model("old").fingerprint.id
    assert p["metadata"] == {"t": "a"} and p["embedded_at"] and len(p["text_sha256"]) == 64


def test_ingest_resumes_and_rewrites_only_changed_text(runtime: Runtime, tmp_path: Path) -> None:
    docs = list(read_jsonl(write_jsonl(tmp_path / "c.jsonl", DOCS)))
    ingest(runtime, "old", docs[:2], progress=False)  # an interrupted first run
    assert ingest(runtime, "old", docs, progress=False) == {"written": 1, "skipped": 2, "total": 3}
    changed = [*DOCS[:2], {**DOCS[2], "text": "yield turns a function into a generator."}]
    docs = list(read_jsonl(write_jsonl(tmp_path / "c2.jsonl", changed)))
    assert ingest(runtime, "old", docs, progress=False)["written"] == 1


def test_index_refuses_a_second_model(tmp_path: Path, models: dict) -> None:
    docs = list(read_jsonl(write_jsonl(tmp_path / "c.jsonl", DOCS)))
    rt = Runtime(demo_settings(tmp_path), models)
    ingest(rt, "old", docs, progress=False)
    rt.close()
    # Same index, other model configured as "old": the bilingual index is refused.
    swapped = Runtime(demo_settings(tmp_path), {"old": models["new"]})
    with pytest.raises(RuntimeError, match="refusing to mix models"):
        ingest(swapped, "old", docs, progress=False)
    assert swapped.store("old").count() == 3
    swapped.close()


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        ('{"text": "no id"}', "id"),
        ('{"id": "x", "text": 5}', "'text' must be a string"),
        ('{"id": "x", "text": "   "}', "empty text"),
        ('{"id": "x", "text": "t", "metadata": [1]}', "'metadata' must be an object"),
        ("not json", "not JSON"),
    ],
)
def test_bad_lines_name_the_line(tmp_path: Path, line: str, msg: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(DOCS[0]) + "\n" + line + "\n")
    with pytest.raises(CorpusError, match=msg) as e:
        list(read_jsonl(path))
    assert ":2:" in str(e.value)


def test_migrate_start_seeds_every_doc_without_dense_vectors(
    runtime: Runtime, tmp_path: Path
) -> None:
    docs = list(read_jsonl(write_jsonl(tmp_path / "c.jsonl", DOCS)))
    ingest(runtime, "old", docs, progress=False)
    out = start_migration(runtime, progress=False)
    new = runtime.store("new")
    assert out["documents"] == 3 and out["migrated"] == 0
    assert new.info().fingerprint == runtime.model("new").fingerprint.id
    # BM25 covers every document from minute one
    hits = new.search_sparse(runtime.bm25.query("context manager"), 3)
    assert hits[0][0] == "2"
    state = runtime.state.get("migration")
    assert state["state"] == "running" and state["new_fingerprint"] == out["new_fingerprint"]
    assert start_migration(runtime, progress=False)["seeded"] == 0  # idempotent


def test_cli_ingest_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", DOCS)
    # No proxy on that port: status reads the stores itself.
    cfg = cli_config(tmp_path / "c.yaml", tmp_path / "data", free_port())
    assert main(["--config", str(cfg), "ingest", "--index", "old", "--quiet", str(corpus)]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 3
    assert main(["--config", str(cfg), "migrate", "start", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["indexes"]["old"]["documents"] == 3 and status["indexes"]["new"]["documents"] == 3
    assert status["indexes"]["new"]["coverage"] == 0.0 and status["remaining"] == 3
    assert main(["--config", str(cfg), "status"]) == 0
    assert "3 documents, 0 with vectors" in capsys.readouterr().out
    assert main(["--config", str(cfg), "optimize", "--index", "old"]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == "old"
    assert main(["--config", str(cfg), "status", "--json"]) == 0  # still readable after it
    assert json.loads(capsys.readouterr().out)["indexes"]["old"]["documents"] == 3
    assert main(["--config", str(cfg), "backfill", "pause"]) == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True
    assert main(["--config", str(tmp_path / "missing.yaml"), "status"]) == 2


def test_migrate_start_respects_the_configs_lazy_switch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`migrate start` (strategy lazy) re-embeds search hits only if `migration.lazy` says so;
    shadow and rebuild never do; a lazy start after them follows the config again."""
    corpus = write_jsonl(tmp_path / "c.jsonl", DOCS)
    cfg = cli_config(tmp_path / "c.yaml", tmp_path / "data", free_port())

    def lazy_after(*args: str, lazy: bool) -> bool:
        data = yaml.safe_load(cfg.read_text())
        cfg.write_text(yaml.safe_dump({**data, "migration": {"lazy": lazy}}))
        assert main(["--config", str(cfg), *args]) == 0
        capsys.readouterr()
        assert main(["--config", str(cfg), "status", "--json"]) == 0
        return bool(json.loads(capsys.readouterr().out)["control"]["lazy"])

    assert main(["--config", str(cfg), "ingest", "--index", "old", "--quiet", str(corpus)]) == 0
    assert lazy_after("migrate", "start", "--quiet", lazy=False) is False
    assert lazy_after("migrate", "start", "--quiet", "--strategy", "rebuild", lazy=True) is False
    assert lazy_after("migrate", "start", "--quiet", lazy=True) is True
    assert lazy_after("status", lazy=False) is False  # the config decides, not the last start
