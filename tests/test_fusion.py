"""Fusion is pure: these tests use hand-made ranked lists, no models or engines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import FusionConfig, Weights
from proxy.fusion import FusionParams, default_profile, fuse, params_for, plain_rrf, weights_at


def test_rrf_formula_matches_definition() -> None:
    ranked = {"old": ["a", "b"], "new": ["b", "c"], "bm25": ["c", "a"]}
    p = FusionParams(
        k=60,
        weights={"old": 1.0, "new": 2.0, "bm25": 0.5},
        impute_missing=False,
        scale_new_ranks=False,
    )
    got = {f.doc_id: f.score for f in fuse(ranked, p, migrated={"b", "c"}, limit=10)}
    assert got["a"] == pytest.approx(1.0 / 61 + 0.5 / 62)
    assert got["b"] == pytest.approx(1.0 / 62 + 2.0 / 61)
    assert got["c"] == pytest.approx(2.0 / 62 + 0.5 / 61)


def test_provenance_ranks_and_dedupe() -> None:
    ranked = {"old": ["a", "b", "a"], "new": ["a"], "bm25": []}
    out = fuse(ranked, plain_rrf(60), migrated={"a"}, limit=10)
    assert [f.doc_id for f in out] == ["a", "b"]
    assert out[0].ranks == {"old": 1, "new": 1, "bm25": None}
    assert out[0].migrated and not out[1].migrated


def test_plain_rrf_gives_migrated_docs_double_credit() -> None:
    # Same old rank neighbourhood, but only `m` is migrated: plain RRF lets it win on coverage.
    ranked = {"old": ["u", "m"], "new": ["m"], "bm25": []}
    out = fuse(ranked, plain_rrf(60), migrated={"m"}, limit=2)
    assert out[0].doc_id == "m"


def test_imputation_keeps_unmigrated_docs_competitive() -> None:
    # u ranks above m in the old space; m is the only migrated doc and tops the new list.
    ranked = {"old": ["u", "m"], "new": ["m"], "bm25": []}
    p = FusionParams(
        k=60,
        weights={"old": 1.0, "new": 1.0, "bm25": 1.0},
        impute_missing=True,
        scale_new_ranks=False,
        coverage=0.5,
    )
    out = fuse(ranked, p, migrated={"m"}, limit=2)
    assert [f.doc_id for f in out] == ["u", "m"]
    assert out[0].imputed and not out[1].imputed


def test_imputed_score_equals_migrated_score_when_ranks_agree() -> None:
    # A doc whose new rank equals its old rank must score the same migrated or not.
    ranked = {"old": ["x", "y"], "new": ["x"], "bm25": []}
    p = FusionParams(
        k=60,
        weights={"old": 0.3, "new": 1.0, "bm25": 1.0},
        impute_missing=True,
        scale_new_ranks=False,
        coverage=0.5,
    )
    with_vec = fuse(ranked, p, migrated={"x"}, limit=2)
    without = fuse({"old": ["x", "y"], "new": [], "bm25": []}, p, migrated=set(), limit=2)
    assert with_vec[0].score == pytest.approx(without[0].score)


def test_new_ranks_scale_with_coverage() -> None:
    ranked = {"old": [], "new": ["a"], "bm25": []}
    p = FusionParams(
        k=60,
        weights={"old": 0, "new": 1.0, "bm25": 0},
        impute_missing=True,
        scale_new_ranks=True,
        coverage=0.25,
    )
    (f,) = fuse(ranked, p, migrated={"a"}, limit=1)
    assert f.score == pytest.approx(1.0 / (60 + 1 / 0.25))


def test_weights_interpolate_with_coverage() -> None:
    cfg = FusionConfig(
        weights_at_0=Weights(old=1.0, new=0.0, bm25=1.0),
        weights_at_100=Weights(old=0.0, new=1.0, bm25=0.5),
    )
    rule = default_profile(cfg)
    assert weights_at(rule, 0.0) == {"old": 1.0, "new": 0.0, "bm25": 1.0}
    assert weights_at(rule, 1.0) == {"old": 0.0, "new": 1.0, "bm25": 0.5}
    mid = weights_at(rule, 0.5)
    assert mid == pytest.approx({"old": 0.5, "new": 0.5, "bm25": 0.75})
    assert weights_at(rule, 7.0) == weights_at(rule, 1.0)  # clamped
    assert params_for(cfg, 0.5).coverage == 0.5


def test_ties_are_deterministic_and_limit_applies() -> None:
    ranked = {"old": ["b", "a"], "new": ["a", "b"], "bm25": []}
    out1 = fuse(ranked, plain_rrf(60), migrated={"a", "b"}, limit=1)
    out2 = fuse(ranked, plain_rrf(60), migrated={"a", "b"}, limit=1)
    assert len(out1) == 1 and out1 == out2


def test_lists_outside_params_are_ignored() -> None:
    ranked = {"old": ["a"], "new": ["b"], "bm25": ["c"]}
    p = plain_rrf(60, lists=("new", "bm25"))
    assert {f.doc_id for f in fuse(ranked, p, migrated={"b"}, limit=10)} == {"b", "c"}


@given(
    st.dictionaries(
        st.sampled_from(["old", "new", "bm25"]),
        st.lists(st.sampled_from("abcdefghijklmnop"), max_size=12),
    ),
    st.sets(st.sampled_from("abcdefghijklmnop")),
    st.floats(0.05, 1.0),
    st.integers(1, 20),
)
def test_top_limit_is_the_head_of_the_full_order(
    ranked: dict[str, list[str]], migrated: set[str], coverage: float, limit: int
) -> None:
    """Only the kept results are built; they must be exactly the head of the full ranking,
    itself ordered by score, then best single rank, then doc id."""
    p = FusionParams(k=5, weights={"old": 0.3, "new": 1.0, "bm25": 1.0}, coverage=coverage)
    full = fuse(ranked, p, migrated, limit=10_000)
    assert fuse(ranked, p, migrated, limit) == full[:limit]
    keys = [(-f.score, min(r for r in f.ranks.values() if r), f.doc_id) for f in full]
    assert keys == sorted(keys)
    assert {f.doc_id for f in full} == {d for lst in ranked.values() for d in lst}
