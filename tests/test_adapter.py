"""The query adapter (proxy/adapter.py): fit, apply, fidelity on held-out pairs, serialisation,
when a map is served, and the fusion of the two lists; one test with the two real models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from proxy.adapter import (
    QueryMap,
    fit_query_map,
    fuse_vector,
    min_pairs,
    needs_refit,
    neighbour_agreement,
    unit,
    usable,
)
from proxy.config import VectorClientsConfig
from proxy.demo import python_reference
from proxy.model import Embedder


def spaces(n: int, d: int = 16, seed: int = 0, noise: float = 0.05) -> tuple[np.ndarray, ...]:
    """Old vectors and new ones that are a linear image of them (plus noise) in which some
    directions are stretched, others shrunk: neighbourhoods differ between the two spaces,
    and a linear map can recover the new ones from the old vectors."""
    rng = np.random.default_rng(seed)
    old = unit(rng.standard_normal((n, d)))
    stretch = np.diag(np.geomspace(6.0, 0.2, d)) @ np.linalg.qr(rng.standard_normal((d, d)))[0]
    new = unit(old @ stretch + noise * rng.standard_normal((n, d)))
    return old.astype(np.float32), new.astype(np.float32)


def test_a_map_of_related_spaces_is_faithful_and_its_fidelity_says_so() -> None:
    old, new = spaces(1500)
    qmap = fit_query_map(old[:1000], new[:1000], "old@1", "new@2", fitted_at="t")
    assert qmap.pairs == 1000 and qmap.matrix.shape == (16, 16) and qmap.matrix.dtype == np.float32
    assert 0 < qmap.held_out < qmap.pairs
    # pairs never fitted: mapped old vectors land near their own new vectors
    mapped = qmap.apply(old[1000:])
    assert np.allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-5)
    cos_own = np.sum(mapped * new[1000:], axis=1)
    cos_other = np.sum(mapped * np.roll(new[1000:], 1, axis=0), axis=1)
    assert cos_own.mean() > 0.9 > cos_other.mean()
    # and the map sees the new space's neighbourhoods better than the old space itself
    assert qmap.fidelity == pytest.approx(qmap.agreement - qmap.old_agreement, abs=1e-5)
    assert qmap.fidelity > 0.2
    # one vector or a batch
    assert np.allclose(qmap.apply(old[1000]), mapped[0], atol=1e-6)


def test_unrelated_pairs_give_no_fidelity() -> None:
    old, new = spaces(1000)
    shuffled = new[np.random.default_rng(1).permutation(len(new))]
    qmap = fit_query_map(old, shuffled, "o", "n")
    assert qmap.agreement < 0.1  # chance: 10 of 199 held-out neighbours
    assert abs(qmap.fidelity) < 0.05  # no better than the old space's own neighbourhoods
    assert not usable(qmap, VectorClientsConfig(adapter_min_pairs=22))


def test_fidelity_is_measured_on_held_out_pairs_only() -> None:
    """Pairs of pure noise, fewer than the dimensions: the map memorises the pairs it is
    fitted on (its neighbourhoods agree there) and knows nothing of others. The fidelity
    reported is the held-out one: nothing."""
    rng = np.random.default_rng(2)
    d = 512
    old = unit(rng.standard_normal((300, d))).astype(np.float32)
    new = unit(rng.standard_normal((300, d))).astype(np.float32)
    qmap = fit_query_map(old, new, "o", "n", ridge=1e-6)
    assert qmap.held_out == 60
    on_fitted, _ = neighbour_agreement(qmap.matrix, old, new)  # every pair was fitted
    assert on_fitted > 0.8
    assert qmap.agreement < 0.35  # chance: 10 of 59 held-out neighbours
    assert abs(qmap.fidelity) < 0.15


def test_the_fit_is_seeded_and_capped() -> None:
    old, new = spaces(600)
    a = fit_query_map(old, new, "o", "n", seed=3, fitted_at="t")
    b = fit_query_map(old, new, "o", "n", seed=3, fitted_at="t")
    assert a.fidelity == b.fidelity and np.array_equal(a.matrix, b.matrix)
    capped = fit_query_map(old, new, "o", "n", max_pairs=300)
    assert capped.pairs == 300 and capped.held_out == 60
    with pytest.raises(ValueError, match="row-aligned"):
        fit_query_map(old, new[:-1], "o", "n")
    with pytest.raises(ValueError, match="at least"):
        fit_query_map(old[:10], new[:10], "o", "n")


def test_json_round_trip() -> None:
    old, new = spaces(400)
    qmap = fit_query_map(old, new, "old@1", "new@2")
    data = json.loads(json.dumps(qmap.to_json()))
    back = QueryMap.from_json(data)
    assert np.array_equal(back.matrix, qmap.matrix) and back.matrix.dtype == np.float32
    assert back.summary() == qmap.summary() and "matrix" not in back.summary()
    assert np.array_equal(back.apply(old[:5]), qmap.apply(old[:5]))
    data["shape"] = [16, 15]
    with pytest.raises(ValueError, match="float32 matrix"):
        QueryMap.from_json(data)


def test_usable_only_when_auto_enough_pairs_faithful_and_the_same_models() -> None:
    old, new = spaces(1000)
    qmap = fit_query_map(old, new, "old@1", "new@2")
    cfg = VectorClientsConfig(adapter_min_pairs=500, adapter_min_fidelity=0.05)
    assert usable(qmap, cfg) and usable(qmap, cfg, "old@1", "new@2")
    assert not usable(None, cfg)
    assert not usable(qmap, cfg.model_copy(update={"adapter": "off"}))
    assert not usable(qmap, cfg, "old@other", "new@2")
    assert not usable(qmap, cfg, "old@1", "new@other")
    assert not usable(qmap, cfg.model_copy(update={"adapter_min_pairs": 1001}))
    assert not usable(qmap, cfg.model_copy(update={"adapter_min_fidelity": qmap.fidelity + 0.01}))
    # by default: twice the old model's dimension
    default = VectorClientsConfig()
    assert min_pairs(default, 384) == 768 and min_pairs(cfg, 384) == 500
    few = fit_query_map(old[:31], new[:31], "old@1", "new@2")
    assert few.pairs == 31 < min_pairs(default, 16)
    assert not usable(few, default.model_copy(update={"adapter_min_fidelity": -1}))


def test_refit_as_coverage_grows() -> None:
    old, new = spaces(400)
    qmap = fit_query_map(old, new, "o", "n")
    cfg = VectorClientsConfig(adapter_refit_growth=0.25, adapter_max_pairs=1000)
    assert needs_refit(None, 100, cfg) and not needs_refit(None, 5, cfg)
    assert not needs_refit(qmap, 499, cfg) and needs_refit(qmap, 500, cfg)
    assert not needs_refit(qmap, 500, cfg.model_copy(update={"adapter": "off"}))
    assert not needs_refit(qmap, 5000, cfg.model_copy(update={"adapter_max_pairs": 400}))


def test_fusion_without_a_map_is_the_old_order() -> None:
    old = [("a", 0.9), ("b", 0.7), ("c", 0.69), ("d", 0.2)]
    fused = fuse_vector(old, [], migrated={"a", "c"}, limit=3)
    assert [f.doc_id for f in fused] == ["a", "b", "c"]
    assert all(not f.imputed for f in fused)
    assert fused[0].ranks == {"old": 1, "new": None}


def test_fusion_sums_z_scores_and_imputes_the_unmigrated() -> None:
    old = [("a", 0.90), ("b", 0.80), ("c", 0.70), ("d", 0.60)]
    # the map puts c far first; x is a migrated doc only the new list found
    new = [("c", 0.95), ("a", 0.3), ("x", 0.25), ("d", 0.1)]
    fused = fuse_vector(old, new, migrated={"a", "c", "d", "x"}, limit=10)
    order = [f.doc_id for f in fused]
    by_id = {f.doc_id: f for f in fused}

    def z(scores: list[float], s: float) -> float:
        return float((s - np.mean(scores)) / np.std(scores))

    zo, zn = [s for _, s in old], [s for _, s in new]
    # c: third in the old list, far first in the new one, overtakes a and b
    assert by_id["c"].score == pytest.approx(z(zo, 0.70) + z(zn, 0.95))
    assert order[0] == "c"
    # b holds no new vector: its old z-score stands in for the new one, so it keeps its place
    # among old neighbours instead of sinking for the missing list
    assert by_id["b"].imputed and not by_id["b"].migrated
    assert by_id["b"].score == pytest.approx(2 * z(zo, 0.80))
    # a doc missing from one list gets that list's lowest z-score
    assert by_id["x"].score == pytest.approx(z(zo, 0.60) + z(zn, 0.25))
    assert order.index("b") < order.index("d")
    # provenance: each list's rank
    assert by_id["x"].ranks == {"old": None, "new": 3}
    assert by_id["c"].ranks == {"old": 3, "new": 1}
    scores = [f.score for f in fused]
    assert scores == sorted(scores, reverse=True)
    assert [f.doc_id for f in fuse_vector(old, new, {"a", "c", "d", "x"}, limit=2)] == order[:2]


@pytest.mark.slow
def test_real_models_map_old_vectors_near_their_new_ones(models: dict[str, Embedder]) -> None:
    """paraphrase-MiniLM-L3 -> all-MiniLM-L6 on 240 passages of the demo corpus, their first
    300 characters (embedding them is this test's time; whole passages took twice as long):
    fitted on 180, the map puts the other 60 documents' old vectors nearer their own new
    vectors than chance and than the old vectors as they are (same dimension, incompatible
    spaces)."""
    docs = python_reference()
    texts = [d.text[:300] for d in docs[:: max(1, len(docs) // 240)]][:240]
    old = models["old"].embed_documents(texts)
    new = models["new"].embed_documents(texts)
    fps = (models["old"].fingerprint.id, models["new"].fingerprint.id)
    qmap = fit_query_map(old[:180], new[:180], *fps)
    assert qmap.pairs == 180 and qmap.held_out == 36
    held_old, held_new = old[180:], unit(new[180:])
    sims = qmap.apply(held_old) @ held_new.T
    own = np.diag(sims)
    recall_at_1 = float(np.mean(sims.argmax(axis=1) == np.arange(len(sims))))
    assert recall_at_1 > 6 / len(sims)  # chance is 1 in 60
    assert own.mean() > np.median(sims, axis=1).mean() + 0.2
    as_is = np.diag(unit(held_old) @ held_new.T)
    assert own.mean() > as_is.mean()
    # its fidelity (measured on 36 of the 180 by a map fitted on the other 144) says what
    # the 60 documents it never saw show: the map sees the new model's neighbourhoods better
    # than the old model's own vectors do
    unseen, old_own = neighbour_agreement(qmap.matrix, held_old, held_new)
    assert qmap.fidelity > 0 and unseen > old_own
