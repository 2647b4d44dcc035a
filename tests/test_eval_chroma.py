"""`crossfade eval --backend chroma`: the simulation's indexes as Chroma collections (an
embedded Chroma under the eval directory, or the session's real `chroma run` server), scored
as on edge shards. The fusion must not depend on the store: every figure of every system at
every coverage within 0.005 of the edge run's (the SciFact and ArguAna runs are in
docs/measurements/chroma-eval.md)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import chromadb
import pytest

from proxy.cli import main
from proxy.config import IndexConfig
from proxy.store import IndexInfo
from proxy.store.chroma import ChromaStore
from tests.helpers import SCIFACT
from tests.test_eval import SERVE_ANY_MAP, eval_config, make_subset

pytestmark = pytest.mark.skipif(not SCIFACT.exists(), reason="../shared/data/scifact not present")
TOLERANCE = 0.005


def run_eval(capsys: pytest.CaptureFixture[str], cfg: Path, beir: Path, *extra: str) -> Any:
    argv = ["--config", str(cfg), "eval", "--beir", str(beir), "--json", *extra]
    assert main([*argv, "--simulate-coverage", "0,50,100"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_on_chroma_gives_the_edge_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chroma_server: Any
) -> None:
    beir = make_subset(tmp_path / "beir", n_extra=100)
    cfg = eval_config(tmp_path, SERVE_ANY_MAP)
    edge = run_eval(capsys, cfg, beir)
    embedded = run_eval(capsys, cfg, beir, "--backend", "chroma")
    served = run_eval(capsys, cfg, beir, "--backend", "chroma", "--chroma-url", chroma_server.url)

    (eval_dir,) = (tmp_path / "data" / "eval").iterdir()
    assert (eval_dir / "chroma").is_dir()  # the embedded Chroma, beside the edge shards
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
    names = {c.name for c in client.list_collections()}
    assert {f"eval-{eval_dir.name}-old", f"eval-{eval_dir.name}-new"} <= names
    for chroma in (embedded, served):
        assert chroma["adapter"] == edge["adapter"]  # the same pairs, the same map
        assert list(chroma["coverage"]) == list(edge["coverage"])
        for pct, systems in edge["coverage"].items():
            assert list(chroma["coverage"][pct]) == list(systems)
            for system, metrics in systems.items():
                for metric, value in metrics.items():
                    got = chroma["coverage"][pct][system][metric]
                    assert got == pytest.approx(value, abs=TOLERANCE), (pct, system, metric)
    for side in ("old", "new"):
        name = f"eval-{eval_dir.name}-{side}"
        # searched 4 x as broadly as the lists are deep: an exact top-100, as on edge
        assert client.get_collection(name).configuration["hnsw"]["ef_search"] == 400
        client.delete_collection(name)  # the server outlives the test


def test_ef_search_is_set_on_a_collection_of_ours(chroma_server: Any) -> None:
    name = f"ef-{uuid.uuid4().hex[:8]}"
    cfg = IndexConfig(backend="chroma", url=chroma_server.url, collection=name)
    store = ChromaStore("new", cfg)
    store.create(IndexInfo(dim=4, fingerprint="m", sparse=False))
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
    assert client.get_collection(name).configuration["hnsw"]["ef_search"] == 100  # Chroma's
    store.close()
    wider = ChromaStore("new", cfg.model_copy(update={"ef_search": 250}))
    assert wider.info() is not None
    assert client.get_collection(name).configuration["hnsw"]["ef_search"] == 250
    wider.drop()
    wider.close()
    with pytest.raises(ValueError, match="'ef_search' is Chroma's"):
        IndexConfig(backend="edge", path="x", ef_search=250)


def test_a_chroma_url_needs_the_chroma_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beir = make_subset(tmp_path / "beir", n_queries=2, n_extra=5)
    argv = ["--config", str(eval_config(tmp_path)), "eval", "--beir", str(beir)]
    assert main([*argv, "--chroma-url", "http://127.0.0.1:1"]) == 1
    assert "a Chroma URL is for backend 'chroma'" in capsys.readouterr().err
