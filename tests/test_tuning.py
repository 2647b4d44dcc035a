"""Fitting the fusion on labelled queries: the discipline (never scored on the queries fitted),
BEIR's handling of graded and missing judgements, and that the serving path uses a stored fit.
The pure parts run on hand-made ranked lists; the serving part on real models over HTTP."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from proxy.app import create_app
from proxy.config import FusionConfig
from proxy.demo import python_reference
from proxy.evaluation import ndcg_at_k, parse_qrels, score_run
from proxy.experiment import score_systems
from proxy.fusion import LISTS, Profile, default_profile, params_for, weights_at
from proxy.ingest import ingest
from proxy.migration.fitted import KEY, load_fit, save_fit
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from proxy.search import Candidates
from proxy.tuning import (
    fit_profile,
    grid,
    indistinguishable,
    query_hash_half,
    split_for_fitting,
)
from tests.helpers import LiveServer, demo_settings, wait_for

DOCS = [f"d{i}" for i in range(60)]


def world(n_queries: int, good: str, seed: int) -> tuple[dict, dict[str, dict[str, int]]]:
    """Queries whose one relevant doc the `good` list ranks first; the other lists rank it
    at random depths or not at all. Coverage 0 and 1 (at 1 every doc is migrated)."""
    rng = random.Random(seed)
    qrels: dict[str, dict[str, int]] = {}
    steps: dict[int, tuple[float, dict[str, Candidates]]] = {0: (0.0, {}), 100: (1.0, {})}
    for i in range(n_queries):
        qid = f"{good}-q{i}"
        rel = rng.choice(DOCS)
        qrels[qid] = {rel: 1}
        ranked = {}
        for name in LISTS:
            order = rng.sample(DOCS, 30)
            if name == good:
                order = [rel] + [d for d in order if d != rel]
            elif rel in order:
                order.remove(rel)
            ranked[name] = order
        steps[0][1][qid] = Candidates({"old": ranked["old"], "bm25": ranked["bm25"]}, set())
        steps[100][1][qid] = Candidates(ranked, set(DOCS))
    return steps, qrels


def test_hash_split_is_disjoint_deterministic_and_covers_every_query() -> None:
    qrels = {f"q{i}": {"d": 1} for i in range(400)}
    a = split_for_fitting(qrels, None)
    b = split_for_fitting(dict(reversed(list(qrels.items()))), None)
    assert set(a.fit) == set(b.fit) and set(a.score) == set(b.score)  # order does not matter
    assert not set(a.fit) & set(a.score) and set(a.fit) | set(a.score) == set(qrels)
    assert 150 < len(a.fit) < 250  # about half
    assert all(query_hash_half(q) == 1 for q in a.score)


def test_a_train_split_is_fitted_and_the_evaluation_queries_scored() -> None:
    test = {"t1": {"d": 1}, "t2": {"d": 1}}
    train = {"r1": {"d": 1}, "t2": {"d": 1}}  # a query in both is never fitted on
    parts = split_for_fitting(test, train)
    assert set(parts.fit) == {"r1"} and set(parts.score) == {"t1", "t2"}


def test_grid_holds_every_fixed_pipeline() -> None:
    rows = {tuple(r) for r in grid().tolist()}
    for fixed in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)]:
        assert tuple(map(float, fixed)) in rows
    assert all(max(r) == 1.0 for r in rows)  # one scale only


@pytest.mark.parametrize("good", ["old", "bm25"])
def test_fit_follows_the_list_that_finds_the_relevant_docs(good: str) -> None:
    steps, qrels = world(80, good, seed=1)
    prior = default_profile(FusionConfig())
    profile, fitted = fit_profile(steps, qrels, 60, prior, "test")
    # the fit found, at each coverage, a fusion that ranks every relevant doc first ...
    assert fitted["0"] > 0.95 and fitted["100"] > 0.95
    # ... and at 100%, where nothing is imputed, by trusting the good list most
    w100 = profile.knots[-1][1]
    assert w100[good] == 1.0 and all(w < 1.0 for n, w in w100.items() if n != good)


def test_fit_then_score_reports_held_out_queries_only() -> None:
    """Fitted on one world, scored on the opposite one: the tuned figure is what the held-out
    queries get (the fit cannot have seen them), not the fitting figure."""
    fit_steps, fit_qrels = world(80, "bm25", seed=2)
    score_steps, score_qrels = world(80, "old", seed=3)
    cfg = FusionConfig()
    profile, fitted = fit_profile(fit_steps, fit_qrels, 60, default_profile(cfg), "test")
    result = score_systems(score_steps, score_qrels, cfg, profile)
    assert fitted["0"] > 0.9
    assert result["0"]["crossfade-tuned"]["ndcg@10"] < result["0"]["old"]["ndcg@10"]
    assert result["0"]["old"]["ndcg@10"] == 1.0


def test_graded_gains_and_judged_docs_missing_from_the_corpus() -> None:
    qrels = parse_qrels(["query-id\tcorpus-id\tscore", "q\ta\t2", "q\tb\t1", "q\tgone\t2"])
    assert qrels == {"q": {"a": 2, "b": 1, "gone": 2}}
    # grade is the gain (BEIR / pytrec_eval): a then b beats b then a
    assert ndcg_at_k(["a", "b"], qrels["q"]) > ndcg_at_k(["b", "a"], qrels["q"])
    # the ideal ranking counts the judged doc the corpus lacks, so no run reaches 1
    ideal = 2 + 2 / 1.5849625007211562 + 1 / 2
    assert ndcg_at_k(["a", "b"], qrels["q"]) == pytest.approx((2 + 1 / 1.5849625007211562) / ideal)
    # a query whose every relevant doc is missing still counts, with 0
    both = {"q": qrels["q"], "lost": {"gone": 1}}
    assert score_run({"q": ["a", "b"], "lost": ["a"]}, both)["ndcg@10"] == pytest.approx(
        ndcg_at_k(["a", "b"], qrels["q"]) / 2, abs=1e-4
    )
    assert parse_qrels(["q\tx\t0", "q\ty\t-1"]) == {"q": {"x": 0, "y": -1}}
    assert ndcg_at_k(["x", "y"], {"x": 0, "y": -1}) == 0.0  # no gain below grade 1


def test_profile_knots_interpolate() -> None:
    p = Profile(
        knots=(
            (0.0, {"old": 1.0, "new": 0.0, "bm25": 1.0}),
            (0.5, {"old": 0.0, "new": 1.0, "bm25": 1.0}),
            (1.0, {"old": 0.0, "new": 1.0, "bm25": 0.0}),
        ),
        impute_from=("bm25",),
    )
    assert weights_at(p, 0.25) == pytest.approx({"old": 0.5, "new": 0.5, "bm25": 1.0})
    assert weights_at(p, 0.75) == pytest.approx({"old": 0.0, "new": 1.0, "bm25": 0.5})
    assert weights_at(p, 2.0) == weights_at(p, 1.0)
    assert params_for(FusionConfig(), 0.25, p).impute_from == ("bm25",)


TOPICS = ("assert", "exceptions", "for", "with", "import", "try")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[tuple[str, Runtime]]:
    docs = [d for d in python_reference() if d.metadata["topic"] in TOPICS]
    settings = demo_settings(
        tmp_path_factory.mktemp("fit"),
        migration={"lazy": False, "backfill": False},
        server={"history_interval_s": 0.5},
    )
    rt = Runtime(settings, models)
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)
    ingest(rt, "new", docs[::2], progress=False)
    with LiveServer(create_app(rt)) as live:
        yield live.url, rt


def only(name: str) -> Profile:
    w = {n: float(n == name) for n in LISTS}
    return Profile(((0.0, w), (1.0, w)), ("old", "bm25"), f"{name} only")


@pytest.mark.parametrize("name", ["old", "bm25"])
def test_the_serving_path_uses_the_stored_fit(served: tuple[str, Runtime], name: str) -> None:
    url, rt = served
    save_fit(rt.state, only(name), rt.fingerprints(), how="test")

    def in_use() -> dict | None:
        fusion = httpx.get(url + "/migration", timeout=10).json()["fusion"]
        return fusion if fusion["source"] == f"{name} only" else None

    fusion = wait_for(in_use, 30, "the proxy to pick up the stored fit")
    assert fusion["weights_now"] == {n: float(n == name) for n in LISTS}
    body = httpx.post(url + "/search", json={"query": "catch an exception", "k": 8}).json()
    # with all the weight on one list, the fused order is that list's order
    assert [h["ranks"][name] for h in body["results"]] == list(range(1, 9))


def test_a_fit_for_another_model_pair_is_not_used(served: tuple[str, Runtime]) -> None:
    url, rt = served
    models = {**rt.fingerprints(), "new": "some-other-model"}
    save_fit(rt.state, only("old"), models, how="test")
    assert load_fit(rt.state, rt.fingerprints()) is None

    def ignored() -> dict | None:
        fusion = httpx.get(url + "/migration", timeout=10).json()["fusion"]
        return fusion if fusion.get("fit", {}).get("ignored") else None

    fusion = wait_for(ignored, 30, "the proxy to drop the fit")
    assert fusion["source"] == "default rule"
    rt.state.set(KEY, None)


def test_what_the_queries_cannot_tell_apart_counts_as_a_tie() -> None:
    """The one-standard-error rule: a lead that a few queries show is no lead; the same lead
    held query after query is."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, size=8)
    swing = np.array([0.2, -0.2] * 4)  # column 1 wins half the queries, loses the other half
    noisy = np.column_stack([base + 0.01, base + swing])  # column 0 ahead by 0.01 on average
    assert set(indistinguishable(noisy).tolist()) == {0, 1}
    steady = np.column_stack([np.full(400, 0.6), np.full(400, 0.59)])
    steady += rng.normal(0, 0.001, size=steady.shape)
    assert indistinguishable(steady).tolist() == [0]
