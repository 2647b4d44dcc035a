"""Real models: the ONNX loader (output chosen by name), the sentence-transformers loader,
fingerprints, the query LRU and the on-disk document cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from proxy.config import ModelConfig
from proxy.document import text_sha256
from proxy.embedding import EmbeddingCache, QueryEmbedder, embed_documents_cached, load_embedder
from proxy.model import Embedder
from tests.helpers import demo_settings

PAIRS = [
    ("How do I catch an exception in Python?", "Use a try statement with an except clause."),
    ("What does the yield keyword do?", "A generator function produces values lazily with yield."),
]


def test_both_models_embed_384d_unit_vectors(models: dict[str, Embedder]) -> None:
    for m in models.values():
        v = m.embed_documents([p[1] for p in PAIRS])
        assert v.shape == (2, 384) and v.dtype == np.float32
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        assert m.fingerprint.dim == 384


def test_each_model_ranks_its_own_answers(models: dict[str, Embedder]) -> None:
    for m in models.values():
        q = m.embed_queries([p[0] for p in PAIRS])
        d = m.embed_documents([p[1] for p in PAIRS])
        sims = q @ d.T
        assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]


def test_same_dimension_but_incompatible_spaces(models: dict[str, Embedder]) -> None:
    """The silent failure: both are 384-d, yet a vector from one is noise to the other."""
    texts = [p[1] for p in PAIRS] + [p[0] for p in PAIRS]
    a = models["old"].embed_documents(texts)
    b = models["new"].embed_documents(texts)
    same_text_cross = np.mean(np.sum(a * b, axis=1))
    same_space = np.mean(np.sum(a[:2] * a[2:], axis=1))
    assert same_text_cross < same_space
    assert models["old"].fingerprint.id != models["new"].fingerprint.id


def test_fingerprint_is_stable_and_sensitive_to_prefixes(models: dict[str, Embedder]) -> None:
    cfg = demo_settings(Path("/x")).models.old
    again = load_embedder(cfg)
    assert again.fingerprint == models["old"].fingerprint
    prefixed = load_embedder(cfg.model_copy(update={"query_prefix": "query: "}))
    assert prefixed.fingerprint.weights_sha256 == again.fingerprint.weights_sha256
    assert prefixed.fingerprint.id != again.fingerprint.id


def test_onnx_output_is_selected_by_name() -> None:
    cfg = demo_settings(Path("/x")).models.old
    with pytest.raises(RuntimeError, match="no output 'nope'.*461"):
        load_embedder(cfg.model_copy(update={"output": "nope"}))


def test_unloadable_model_names_its_path() -> None:
    cfg = ModelConfig(kind="sentence-transformers", path="/does/not/exist")
    with pytest.raises(RuntimeError, match="/does/not/exist"):
        load_embedder(cfg)


def test_query_cache_reuses_vectors(models: dict[str, Embedder]) -> None:
    qc = QueryEmbedder(models["old"], size=2)
    v1 = qc.embed("first")
    assert np.array_equal(qc.embed("first"), v1) and qc.hits == 1
    qc.embed("second")
    qc.embed("third")  # evicts "first"
    qc.embed("first")
    assert qc.misses == 4


def test_document_cache_roundtrip(tmp_path: Path, models: dict[str, Embedder]) -> None:
    m = models["old"]
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    texts = [p[1] for p in PAIRS]
    first = embed_documents_cached(m, texts, cache)
    got = cache.get_many(m.fingerprint.id, [text_sha256(t) for t in texts])
    assert len(got) == 2
    assert np.allclose(embed_documents_cached(m, texts, cache), first)
    # another fingerprint never hits these vectors
    assert cache.get_many("other@1", [text_sha256(t) for t in texts]) == {}
    cache.close()


def test_concurrent_queries_share_one_batch(models: dict[str, Embedder]) -> None:
    import asyncio

    qe = QueryEmbedder(models["new"], size=100, max_batch=8)
    texts = [f"question number {i}" for i in range(20)] + ["question number 3"]

    async def burst() -> list[np.ndarray]:
        return await asyncio.gather(*(qe.aembed(t) for t in texts))

    vecs = asyncio.run(burst())
    assert qe.batches < len(texts)  # 1 alone, then the rest in batches of <= 8
    solo = models["new"].embed_queries([texts[5]])[0]
    assert np.allclose(vecs[5], solo, atol=1e-5)  # batching does not change a vector
    assert np.array_equal(vecs[3], vecs[-1])
