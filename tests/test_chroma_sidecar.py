"""The BM25 sidecar of a Chroma index (on a real `chroma run` server, real models) checked and
mended from the collection: `crossfade verify` reports where the two differ (records written or
deleted behind the store's back), `verify --repair` rewrites those ids, and a sidecar that is
lost (its directory deleted) is rebuilt whole, ranking as it did before."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import pytest
import yaml

from proxy.cli import main
from proxy.config import Settings
from proxy.demo import python_reference
from proxy.document import text_sha256
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.migration.status import verify
from proxy.model import Embedder
from proxy.runtime import Runtime
from proxy.store.chroma import placeholder
from proxy.writes import replay_journal, upsert_documents
from tests.helpers import ROOT, demo_settings

N = 40
QUERIES = ("catch an exception", "for loop over a range", "import a module", "lambda expression")


@pytest.fixture
def deployment(
    tmp_path: Path, models: dict[str, Embedder], chroma_server: Any
) -> Iterator[tuple[Settings, dict[str, Any]]]:
    """Old and new index on the session's Chroma server, the migration started (every record
    seeded into the new collection and its sidecar); dropped at the end."""
    run = uuid.uuid4().hex[:8]
    indexes = {
        side: {"backend": "chroma", "url": chroma_server.url, "collection": f"{side}-{run}"}
        for side in ("old", "new")
    }
    settings = demo_settings(tmp_path / "data", indexes=indexes)
    with Runtime(settings, dict(models)) as rt:
        ingest(rt, "old", python_reference()[:N], progress=False)
        start_migration(rt, progress=False)
    yield settings, indexes
    with Runtime(settings, dict(models)) as rt:
        for side in ("old", "new"):
            rt.store(side).drop()


def bm25_top(rt: Runtime) -> list[list[tuple[str, float]]]:
    return [rt.store("new").search_sparse(rt.bm25.query(q), 10) for q in QUERIES]


def same_ranking(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> None:
    assert [[d for d, _ in q] for q in a] == [[d for d, _ in q] for q in b]
    for qa, qb in zip(a, b, strict=True):
        assert [s for _, s in qa] == pytest.approx([s for _, s in qb], rel=1e-5)


def test_verify_finds_and_repairs_a_divergent_sidecar(
    deployment: tuple[Settings, dict[str, Any]], models: dict[str, Embedder], chroma_server: Any
) -> None:
    settings, indexes = deployment
    docs = python_reference()[:N]
    gone, edited = docs[0].doc_id, docs[1].doc_id
    # Another writer, behind the store's back: one record deleted, one text changed.
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
    col = client.get_collection(indexes["new"]["collection"], embedding_function=None)
    text = "Zebras gallop across the savannah."
    col.delete(ids=[gone])
    col.update(
        ids=[edited],
        embeddings=[placeholder(edited, models["new"].fingerprint.dim)],  # (still seeded only)
        documents=[text],
        metadatas=[{"text_sha256": text_sha256(text)}],
    )

    with Runtime(settings, dict(models)) as rt:
        new = rt.store("new")
        assert new.bm25_sidecar and not rt.store("old").bm25_sidecar
        assert new.search_sparse(rt.bm25.query("zebras savannah"), 3) == []
        report = verify(rt, sample=2)
        found = report["bm25_sidecars"]
        assert found == {"new": {"missing": None, "divergent": 2, "ids": sorted([gone, edited])}}
        assert any("BM25 sidecar" in p and "--repair" in p for p in report["problems"])

        fixed = verify(rt, sample=2, repair=True)["bm25_sidecars"]["new"]
        assert fixed["divergent"] == 2 and fixed["repaired"] == 2 and fixed["left"] == 0
        assert not fixed["rebuilt"]
        assert new.bm25_divergence() == set()
        assert [d for d, _ in new.search_sparse(rt.bm25.query("zebras savannah"), 3)] == [edited]
        hits = {d for q in QUERIES for d, _ in new.search_sparse(rt.bm25.query(q), 40)}
        assert gone not in hits
        again = verify(rt, sample=2)
        assert again["bm25_sidecars"]["new"]["divergent"] == 0
        assert not any("sidecar" in p for p in again["problems"])


def test_a_lost_sidecar_is_rebuilt_from_the_collection(
    deployment: tuple[Settings, dict[str, Any]],
    models: dict[str, Embedder],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, indexes = deployment
    with Runtime(settings, dict(models)) as rt:
        before = bm25_top(rt)
        assert all(before)
    sidecar = settings.data_path(
        f"chroma-bm25/default_tenant/default_database/{indexes['new']['collection']}"
    )
    assert sidecar.is_dir()
    shutil.rmtree(sidecar)  # another data_dir, or deleted

    with Runtime(settings, dict(models)) as rt:
        new = rt.store("new")
        assert new.bm25_sidecar and not new.sparse  # serves without BM25 ...
        with pytest.raises(RuntimeError, match=str(sidecar)):  # ... and refuses writes
            upsert_documents(rt, python_reference()[N : N + 1])
        report = verify(rt, sample=2)
        assert report["bm25_sidecars"]["new"]["missing"] is not None
        assert any("`crossfade verify --repair` rebuilds it" in p for p in report["problems"])

    # The operator's way out: the command line, on the stopped deployment.
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg.update(data_dir=settings.data_dir, indexes=indexes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["--config", str(path), "verify", "--sample", "2", "--repair"])
    out = json.loads(capsys.readouterr().out)
    side = out["bm25_sidecars"]["new"]
    assert side["rebuilt"] and side["repaired"] == N and side["divergent"] == side["left"] == 0
    # (the new index is seeded only: its documents lack vectors, so verify still says no)
    assert code == 1 and not any("sidecar" in p for p in out["problems"])

    with Runtime(settings, dict(models)) as rt:
        new = rt.store("new")
        assert new.sparse and new.bm25_divergence() == set()
        same_ranking(bm25_top(rt), before)
        # the write refused while the sidecar was missing is in the journal: replayed now
        # (not after its retry delay, which a fast run has not reached), then writes go on
        assert replay_journal(rt) == 1 and rt.journal.pending() == []
        added = python_reference()[N : N + 1]
        assert upsert_documents(rt, added) == ["old", "new"]
        assert new.bm25_divergence() == set()
