"""Inference runtimes of one sentence-transformers model: torch, the checked fp32 ONNX export
(the same fingerprint) and int8 ONNX (another fingerprint: never written into an fp32-bound
index, allowed as its query encoder within the configured tolerance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from proxy.document import Doc, doc_of
from proxy.embedding import load_embedder, load_query_embedder, query_loss
from proxy.migration.worker import Reembedder
from proxy.model import Embedder
from proxy.onnx_export import MIN_COSINE, cosines
from proxy.point import make_point
from proxy.runtime import Runtime
from proxy.store import FingerprintMismatch, IndexInfo
from tests.helpers import demo_settings

TEXTS = [
    "short",
    "Vitamin D and respiratory infections in children: a randomised controlled trial. " * 9,
    "Where is the Eiffel tower?",
    "Smoking bans in public places protect bystanders from passive smoke.",
]


@pytest.fixture(scope="module")
def int8() -> Embedder:
    cfg = demo_settings(Path("/nonexistent")).models.new
    return load_embedder(cfg, runtime="onnx-int8")


def test_fp32_export_is_the_torch_model(tmp_path: Path, models: dict[str, Embedder]) -> None:
    cfg = demo_settings(tmp_path).models.new
    assert cfg.runtime == "onnx"  # the shipped default
    torch_model = load_embedder(cfg, runtime="torch")
    onnx_model = load_embedder(cfg, tmp_path)
    assert onnx_model.fingerprint == torch_model.fingerprint == models["new"].fingerprint
    cos = cosines(onnx_model.embed_documents(TEXTS), torch_model.embed_documents(TEXTS))
    assert cos.min() >= MIN_COSINE
    # The check made at export is recorded beside the cached graph, keyed by the weights.
    (record,) = tmp_path.glob("onnx/*/export.json")
    checked = json.loads(record.read_text())
    assert checked["weights_sha256"] == torch_model.fingerprint.weights_sha256
    assert checked["min_cosine"] >= MIN_COSINE


def test_length_sorted_batches_keep_each_text_its_vector(models: dict[str, Embedder]) -> None:
    together = models["new"].embed_documents(TEXTS)  # sorted by length inside, then restored
    alone = np.concatenate([models["new"].embed_documents([t]) for t in TEXTS])
    assert cosines(together, alone).min() >= MIN_COSINE


def test_int8_is_another_model(int8: Embedder, models: dict[str, Embedder]) -> None:
    assert int8.fingerprint.id != models["new"].fingerprint.id
    assert int8.fingerprint.name.endswith("-int8")
    assert int8.fingerprint.dim == models["new"].fingerprint.dim
    loss = query_loss(models["new"], int8)
    assert 0 < loss < 0.005  # close, but not the same vectors


def test_guard_refuses_int8_vectors_into_an_fp32_index(
    tmp_path: Path, models: dict[str, Embedder], int8: Embedder
) -> None:
    settings = demo_settings(tmp_path)
    fp32 = Runtime(settings, models)
    docs = [Doc(doc_id=f"d{i}", text=t, metadata={}) for i, t in enumerate(TEXTS)]
    new = fp32.store("new")
    new.create(IndexInfo(dim=384, fingerprint=models["new"].fingerprint.id, sparse=True))
    vecs = models["new"].embed_documents([d.text for d in docs[:2]])
    new.upsert([make_point(fp32, "new", d, v) for d, v in zip(docs[:2], vecs, strict=True)])
    new.upsert([make_point(fp32, "new", d) for d in docs[2:]])  # seeded, no vector yet
    fp32.close()

    # The same deployment with the new model's runtime switched to int8: every write of its
    # vectors into the fp32-bound index is refused, by the ingest path and by the backfill.
    wrong = Runtime(settings, {"old": models["old"], "new": int8})
    try:
        bad = make_point(wrong, "new", docs[2], int8.embed_documents([docs[2].text])[0])
        with pytest.raises(FingerprintMismatch, match="bound to"):
            wrong.store("new").upsert([bad])
        with pytest.raises(FingerprintMismatch, match="bound to"):
            Reembedder(wrong).step()
        store = wrong.store("new")
        assert store.with_dense([d.doc_id for d in docs]) == {"d0", "d1"}
        assert store.fingerprints() == {models["new"].fingerprint.id: 2}
        assert doc_of(store.retrieve(["d3"], ["text", "metadata", "text_sha256"])["d3"]).text
    finally:
        wrong.close()


def test_int8_queries_for_an_fp32_index_within_tolerance(
    tmp_path: Path, models: dict[str, Embedder]
) -> None:
    cfg = demo_settings(tmp_path).models.new.model_copy(update={"query_runtime": "onnx-int8"})
    queries = load_query_embedder(cfg, models["new"], tmp_path)
    assert queries.fingerprint.name.endswith("-int8")
    strict = cfg.model_copy(update={"query_tolerance": 1e-6})
    with pytest.raises(RuntimeError, match="over query_tolerance"):
        load_query_embedder(strict, models["new"], tmp_path)
    # No other query runtime: the index's own model encodes its queries.
    assert (
        load_query_embedder(cfg.model_copy(update={"query_runtime": None}), models["new"], tmp_path)
        is models["new"]
    )
