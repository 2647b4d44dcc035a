"""Control plane: routing (pure), the gate's decision (pure), and over real HTTP on real models
every strategy end to end: start -> ... -> gated cutover -> rollback; drift; admin auth."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import qdrant_edge as qe

from proxy.cli import main
from proxy.config import CutoverConfig, Mode, Settings
from proxy.demo import python_reference, write_eval_set
from proxy.ingest import ingest
from proxy.migration.cutover import AuditLog, decide, load_routing
from proxy.migration.start import start_migration
from proxy.migration.worker import Reembedder
from proxy.routing import Routing, bucket, rank_biased_overlap, route
from proxy.runtime import Runtime
from proxy.store import point_id
from tests.helpers import LiveServer, cli_config, demo_settings, drain

KEY = "control-test-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
# Statement topics of the reference: 44 passages, 20 of the demo's labelled questions.
TOPICS = {
    "assert",
    "lambda",
    "for",
    "while",
    "import",
    "with",
    "yield",
    "raise",
    "break",
    "continue",
    "return",
    "nonlocal",
    "global",
    "del",
    "pass",
    "if",
    "try",
    "augassign",
    "truth",
    "slicings",
}
DOCS = [d for d in python_reference() if d.metadata["topic"] in TOPICS]
N = len(DOCS)


def test_split_routes_ten_percent_of_keys_and_is_sticky() -> None:
    r = Routing(mode=Mode.FUSED, split_mode=Mode.NEW, split_percent=10)
    keys = [f"client-{i}" for i in range(5000)]
    first = [route(r, k) for k in keys]
    share = sum(m is Mode.NEW for m in first) / len(keys)
    assert 0.08 <= share <= 0.12, share
    assert [route(r, k) for k in keys] == first  # sticky
    assert route(r, "client-1", override=Mode.OLD) is Mode.OLD
    assert route(Routing(mode=Mode.OLD), "anyone") is Mode.OLD
    assert 0 <= bucket("x") < 10_000


def test_requests_without_a_key_split_at_random_or_stay_on_the_base_mode() -> None:
    r = Routing(mode=Mode.FUSED, split_mode=Mode.NEW, split_percent=50)
    drawn = {route(r, None) for _ in range(200)}
    assert drawn == {Mode.FUSED, Mode.NEW}  # "random" (the default): each request drawn anew
    assert {route(r, None, without_key="base") for _ in range(200)} == {Mode.FUSED}
    assert {route(r, "", without_key="base") for _ in range(20)} == {Mode.FUSED}
    keyed = [route(r, f"k{i}", without_key="base") for i in range(200)]
    assert set(keyed) == {Mode.FUSED, Mode.NEW}  # keyed clients are still split


def test_rank_biased_overlap_bounds() -> None:
    a = [str(i) for i in range(10)]
    assert rank_biased_overlap(a, a) == pytest.approx(1.0)
    assert rank_biased_overlap(a, [str(i) for i in range(10, 20)]) == 0.0
    swapped = a[:8] + [a[9], a[8]]
    assert 0.9 < rank_biased_overlap(a, swapped) < 1.0
    assert rank_biased_overlap(a, a[::-1]) < rank_biased_overlap(a, swapped)


def test_gate_decision() -> None:
    gate = CutoverConfig(min_coverage=100, max_ndcg_drop=0.0, max_recall_drop=0.01)
    good = {"ndcg@10": 0.6, "recall@10": 0.7, "p95_ms": 10.0}
    worse = {"ndcg@10": 0.5, "recall@10": 0.7, "p95_ms": 10.0}
    assert decide(1.0, good, good, gate) == []
    assert any("coverage" in w for w in decide(0.5, good, good, gate))
    assert decide(1.0, good, worse, gate) == ["nDCG@10 new 0.5000 < old 0.6000"]
    # A tolerance is printed only where there is one.
    tolerant = CutoverConfig(max_ndcg_drop=0.05, max_recall_drop=0.0)
    assert decide(1.0, good, worse, tolerant) == [
        "nDCG@10 new 0.5000 < old 0.6000 - 0.05 tolerance"
    ]
    less_recall = {**good, "recall@10": 0.6}
    assert decide(1.0, good, less_recall, tolerant) == ["recall@10 new 0.6000 < old 0.7000"]
    assert decide(1.0, good, less_recall, gate) == [
        "recall@10 new 0.6000 < old 0.7000 - 0.01 tolerance"
    ]


def control_settings(data: Path) -> Settings:
    return demo_settings(
        data, server={"admin_key": KEY}, shadow={"sample_rate": 1.0}, migration={"batch_size": 8}
    )


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, cached_models: dict) -> Path:
    """A data dir with the passages in the old index, built once: every test starts from a copy
    of it (ingesting them again is the same state, at ~3 s a test)."""
    data = tmp_path_factory.mktemp("control") / "data"
    with Runtime(control_settings(data), dict(cached_models)) as rt:
        ingest(rt, "old", DOCS, progress=False)
    return data


def copy_of(ingested: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ingested, tmp_path / "data"))


@pytest.fixture
def setup(tmp_path: Path, cached_models: dict, ingested: Path) -> Iterator[tuple[Runtime, Path]]:
    rt = Runtime(control_settings(copy_of(ingested, tmp_path)), dict(cached_models))
    yield rt, write_eval_set(tmp_path / "beir", DOCS)
    rt.close()


def post(url: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(url + path, json=body or {}, headers=ADMIN, timeout=120)


@pytest.mark.parametrize("strategy", ["rebuild", "shadow", "lazy"])
def test_strategy_end_to_end(setup: tuple[Runtime, Path], strategy: str) -> None:
    rt, beir = setup
    start_migration(rt, strategy=strategy, progress=False)
    expected = {"rebuild": Mode.OLD, "shadow": Mode.SHADOW, "lazy": Mode.FUSED}[strategy]
    assert load_routing(rt.state, rt.settings)[0].mode is expected
    rt.state.set("paused", True)  # the test drives the worker itself
    with LiveServer(_app(rt)) as live:
        url = live.url
        r = httpx.post(url + "/search", json={"query": "assert statement"})
        assert r.headers["x-crossfade-mode"] == expected.value
        # Refused while the new index is incomplete, with the numbers
        refused = post(url, "/admin/cutover", {"beir": str(beir)})
        assert refused.status_code == 409
        assert any("coverage" in w for w in refused.json()["gate"]["refused_because"])
        if strategy == "shadow":
            wait = httpx.get(url + "/migration").json()["shadow"]
            assert wait["compared"] >= 1 and wait["mean_overlap@10"] is not None
        drain(Reembedder(rt))
        ok = post(url, "/admin/cutover", {"beir": str(beir), "actor": "tester"})
        assert ok.status_code == 200, ok.text
        gate = ok.json()
        assert gate["ok"] and gate["coverage"] == 1.0 and gate["new"]["ndcg@10"] > 0
        r = httpx.post(url + "/search", json={"query": "assert statement"})
        assert r.headers["x-crossfade-mode"] == "new"
        assert all(set(h["ranks"]) == {"new", "bm25"} for h in r.json()["results"])
        back = post(url, "/admin/rollback", {"actor": "tester"})
        assert back.status_code == 200 and back.json()["to"]["mode"] == expected.value
        r = httpx.post(url + "/search", json={"query": "assert statement"})
        assert r.headers["x-crossfade-mode"] == expected.value
        audit = httpx.get(url + "/admin/audit", headers=ADMIN).json()
        actions = [a["action"] for a in audit]
        assert actions[-3:] == ["cutover refused", "cutover", "rollback"]
        assert audit[-2]["actor"] == "tester" and audit[-2]["gate"]["new"]["ndcg@10"] > 0
    # the pointer survives a restart
    assert load_routing(rt.state, rt.settings)[0].mode is expected


def _app(rt: Runtime):  # type: ignore[no-untyped-def]
    from proxy.app import create_app

    return create_app(rt)


def test_gate_refuses_a_worse_model_and_force_is_recorded(setup: tuple[Runtime, Path]) -> None:
    rt, beir = setup
    start_migration(rt, strategy="rebuild", progress=False)
    rt.state.set("paused", True)
    drain(Reembedder(rt))
    with LiveServer(_app(rt)) as live:
        gate = post(live.url, "/admin/cutover", {"beir": str(_worse_for_new(rt, beir))})
        assert gate.status_code == 409
        why = gate.json()["gate"]["refused_because"]
        assert any("nDCG@10 new" in w for w in why), why
        forced = post(live.url, "/admin/cutover", {"beir": str(beir), "force": True})
        assert forced.status_code == 200 and forced.json()["forced"] is True
        audit = httpx.get(live.url + "/admin/audit", headers=ADMIN).json()
        assert audit[-1]["action"] == "cutover (forced)"


def _worse_for_new(rt: Runtime, beir: Path) -> Path:
    """Relabel each query with the old model's top hit where the new model disagrees: a
    labelled set on which the new model is measurably worse (a 'worse model')."""
    import asyncio

    out = beir.parent / "beir-worse"
    out.mkdir()
    searcher = rt.searcher()
    qrels = []
    queries = [json.loads(x) for x in (beir / "queries.jsonl").read_text().splitlines()]
    for q in queries:
        old = asyncio.run(searcher.search(q["text"], 10, Mode.OLD, fields=()))
        new = asyncio.run(searcher.search(q["text"], 10, Mode.NEW, fields=()))
        new_ids = [h.doc_id for h in new.hits]
        pick = next((h.doc_id for h in old.hits if h.doc_id not in new_ids[:3]), old.hits[0].doc_id)
        qrels.append(f"{q['_id']}\t{pick}\t1")
    (out / "queries.jsonl").write_text((beir / "queries.jsonl").read_text())
    (out / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    (out / "corpus.jsonl").write_text("")
    return out


def test_admin_endpoints_refuse_missing_or_wrong_keys(setup: tuple[Runtime, Path]) -> None:
    rt, _ = setup
    start_migration(rt, progress=False)
    with LiveServer(_app(rt)) as live:
        for path in (
            "/admin/mode",
            "/admin/split",
            "/admin/cutover",
            "/admin/rollback",
            "/migration/backfill",
        ):
            assert httpx.post(live.url + path, json={}).status_code == 401
            bad = httpx.post(live.url + path, json={}, headers={"Authorization": "Bearer x"})
            assert bad.status_code == 401
        assert httpx.get(live.url + "/admin/audit").status_code == 401
        r = post(live.url, "/admin/split", {"mode": "new", "percent": 50, "force": True})
        assert r.status_code == 200 and r.json()["to"]["split_percent"] == 50
        modes = {
            httpx.post(
                live.url + "/search", json={"query": "loops"}, headers={"X-Client-Key": f"k{i}"}
            ).headers["x-crossfade-mode"]
            for i in range(40)
        }
        assert modes == {"fused", "new"}


@contextmanager
def serving(rt: Runtime, drained: bool = False) -> Iterator[str]:
    """The migration started (lazy), the worker paused (the test drives it; `drained`: the
    new index filled first), a live proxy: its URL."""
    start_migration(rt, progress=False)
    rt.state.set("paused", True)
    if drained:
        drain(Reembedder(rt))
    with LiveServer(_app(rt)) as live:
        yield live.url


def routing(url: str) -> dict:
    return httpx.get(url + "/admin/routing", headers=ADMIN).json()


def audit(url: str) -> list[dict]:
    return httpx.get(url + "/admin/audit", params={"n": 1000}, headers=ADMIN).json()


def test_rollback_only_undoes_the_last_cutover(setup: tuple[Runtime, Path]) -> None:
    rt, beir = setup
    with serving(rt, drained=True) as url:
        # Before any cutover there is nothing to undo: refused, and nothing changes.
        start, logged = routing(url), audit(url)
        r = post(url, "/admin/rollback")
        assert r.status_code == 409 and r.json()["error"].startswith("nothing to roll back")
        assert routing(url) == start and audit(url) == logged

        assert post(url, "/admin/split", {"mode": "old", "percent": 10}).status_code == 200
        served_before = routing(url)
        assert post(url, "/admin/cutover", {"beir": str(beir)}).status_code == 200
        assert routing(url)["mode"] == "new" and load_routing(rt.state, rt.settings)[1] is not None
        again = post(url, "/admin/cutover", {"beir": str(beir)})
        assert again.status_code == 409 and again.json()["error"].startswith("already cut over")
        actions = httpx.get(url + "/migration").json()["actions"]
        assert actions["rollback"] is None and actions["cutover"].startswith("already cut over")

        back = post(url, "/admin/rollback", {"actor": "tester"})
        assert back.status_code == 200 and back.json()["action"] == "rollback"
        restored = routing(url)
        same = ("mode", "split_mode", "split_percent")
        assert {k: restored[k] for k in same} == {k: served_before[k] for k in same}

        # The second rollback used to switch forward to `new`, ungated: now it is refused.
        logged = audit(url)
        second = post(url, "/admin/rollback")
        assert second.status_code == 409
        assert second.json()["error"] == (
            "nothing to roll back: no cutover since the last rollback (serving mode=fused, "
            f"split 10% -> old, generation {restored['generation']}); `crossfade mode` "
            "changes the mode"
        )
        assert routing(url) == restored and audit(url) == logged
        assert httpx.get(url + "/migration").json()["actions"]["rollback"] == second.json()["error"]

        # A mode change after a cutover is not what a rollback undoes: it goes back to what
        # served before the cutover.
        assert post(url, "/admin/cutover", {"beir": str(beir), "force": True}).status_code == 200
        assert post(url, "/admin/mode", {"mode": "old"}).status_code == 200
        assert post(url, "/admin/rollback").json()["to"]["mode"] == "fused"
        assert post(url, "/admin/rollback").status_code == 409
    # Persisted: after a restart there is still nothing to roll back.
    assert load_routing(rt.state, rt.settings)[1] is None


def test_new_is_refused_below_the_cutover_coverage_unless_forced(
    setup: tuple[Runtime, Path],
) -> None:
    rt, _ = setup
    with serving(rt) as url:
        start, logged = routing(url), audit(url)
        for path, body in (
            ("/admin/mode", {"mode": "new"}),
            ("/admin/split", {"mode": "new", "percent": 10}),
        ):
            r = post(url, path, body)
            assert r.status_code == 409, r.text
            assert r.json()["error"].startswith("mode new refused: coverage 0.00% < required 100%")
        r = httpx.post(url + "/search", json={"query": "assert statement", "mode": "new"})
        assert r.status_code == 409 and "force" in r.json()["error"]
        assert routing(url) == start and audit(url) == logged

        # Forced: allowed, recorded as forced, and every answer `new` gives says degraded.
        r = post(url, "/admin/split", {"mode": "new", "percent": 100, "force": True})
        assert r.status_code == 200 and r.json()["action"] == "set split (forced)"
        s = httpx.post(url + "/search", json={"query": "assert"}, headers={"X-Client-Key": "a"})
        assert s.headers["x-crossfade-mode"] == "new"
        assert s.headers["x-crossfade-degraded"] == "new index coverage 0.00% < required 100%"
        assert post(url, "/admin/split", {"mode": None}).status_code == 200
        r = post(url, "/admin/mode", {"mode": "new", "force": True})
        assert r.status_code == 200 and r.json()["action"] == "set mode (forced)"
        s = httpx.post(url + "/search", json={"query": "assert statement"})
        assert s.json()["mode"] == "new" and s.json()["degraded"].startswith("new index coverage")

        # At the cutover's coverage `new` needs no force and is not degraded.
        assert post(url, "/admin/mode", {"mode": "fused"}).status_code == 200
        drain(Reembedder(rt))
        r = post(url, "/admin/mode", {"mode": "new"})
        assert r.status_code == 200 and r.json()["action"] == "set mode"
        s = httpx.post(url + "/search", json={"query": "assert statement"})
        assert s.json()["mode"] == "new" and "degraded" not in s.json()


def test_requests_without_a_key_can_stay_on_the_base_mode(
    tmp_path: Path, cached_models: dict, ingested: Path
) -> None:
    settings = demo_settings(
        copy_of(ingested, tmp_path),
        routing={"split_mode": "old", "split_percent": 50, "without_key": "base"},
    )
    with Runtime(settings, dict(cached_models)) as rt:
        start_migration(rt, progress=False)
        rt.state.set("paused", True)
        with LiveServer(_app(rt)) as live:

            def mode(**headers: str) -> str:
                r = httpx.post(live.url + "/search", json={"query": "for"}, headers=headers)
                return r.headers["x-crossfade-mode"]

            assert {mode() for _ in range(20)} == {"fused"}
            assert {mode(**{"X-Client-Key": f"c{i}"}) for i in range(40)} == {"fused", "old"}


def test_backfill_controls_are_audited(
    setup: tuple[Runtime, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    rt, _ = setup
    with serving(rt) as url:
        for body in (
            {"action": "resume", "actor": "ops"},
            {"action": "pause"},
            {"backfill": False},
        ):
            assert post(url, "/migration/backfill", body).status_code == 200
        assert post(url, "/migration/backfill", {"until": 50, "backfill": True}).status_code == 200
        logged = audit(url)
        assert [e["action"] for e in logged[-4:]] == [
            "backfill resume",
            "backfill pause",
            "backfill off",
            "backfill on until 50%",
        ]
        first = logged[-4]
        assert first["actor"] == "ops" and first["before"]["paused"] is True
        assert first["after"]["paused"] is False and logged[-1]["after"]["until"] == 50.0
        # A refused change is not one: nothing recorded.
        assert post(url, "/migration/backfill", {"until": 150}).status_code == 422
        assert audit(url) == logged
    # With no proxy running, the CLI persists the change for the next start: recorded too.
    cfg = cli_config(rt.settings.data_path("c.yaml"), rt.settings.data_dir, 1)
    rt.close()
    monkeypatch.setenv("CROSSFADE_ACTOR", "night-shift")
    assert main(["--config", str(cfg), "backfill", "limit", "--until", "80%"]) == 0
    assert json.loads(capsys.readouterr().out)["until"] == 80.0
    last = AuditLog(rt.state).tail(1)[0]
    assert last["action"] == "backfill until 80%" and last["actor"] == "night-shift"
    assert last["before"]["until"] == 50.0 and last["after"]["until"] == 80.0


def test_drift_catches_vectors_written_behind_the_proxy(
    setup: tuple[Runtime, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rt, _ = setup
    start_migration(rt, progress=False)
    # Nothing listens on port 1: drift reads the stores itself.
    cfg = cli_config(rt.settings.data_path("c.yaml"), rt.settings.data_dir, 1)
    rt.close()
    assert main(["--config", str(cfg), "drift"]) == 0
    capsys.readouterr()
    # Another model writes 10 vectors straight into the new shard, bypassing the proxy.
    shard = qe.EdgeShard.load(str(rt.settings.data_path("new")))
    foreign_fp = "e5-small-v2@deadbeef0000"
    rng = np.random.default_rng(1)
    docs = DOCS[:10]
    points = [
        qe.Point(
            point_id(d.doc_id),
            {"dense": rng.standard_normal(384).tolist()},
            {
                "doc_id": d.doc_id,
                "text": d.text,
                "text_sha256": d.sha,
                "model_fingerprint": foreign_fp,
            },
        )
        for d in docs
    ]
    shard.update(qe.UpdateOperation.upsert_points(points))
    shard.flush()
    shard.close()
    assert main(["--config", str(cfg), "drift"]) == 1
    captured = capsys.readouterr()
    assert foreign_fp in captured.err
    report = json.loads(captured.out)
    assert report["indexes"]["new"]["foreign"] == {foreign_fp: 10}


def test_plan_measures_speed_tokens_cost_and_storage(
    tmp_path: Path, models: dict, ingested: Path
) -> None:
    from proxy.migration.plan import plan

    # The model itself, not the cached one: the plan measures its speed.
    with Runtime(control_settings(copy_of(ingested, tmp_path)), dict(models)) as rt:
        out = plan(rt, sample=16)
    assert out["documents"] == N and out["sample"] == 16
    assert out["docs_per_s_full_speed"] > 0
    assert out["backfill_eta_s_at_budget"] >= out["full_rebuild_s"]  # budget slows it
    assert out["tokens"]["per_doc"] > 10 and out["tokens"]["total"] > N * 10
    price = rt.settings.plan.price_per_million_tokens
    assert out["api_cost"]["total"] == pytest.approx(out["tokens"]["total"] / 1e6 * price, abs=1e-6)
    assert out["storage_bytes"]["new_vectors"] == N * 384 * 4


def test_metrics_expose_the_migration(setup: tuple[Runtime, Path]) -> None:
    rt, _ = setup
    start_migration(rt, strategy="shadow", progress=False)
    rt.state.set("paused", True)
    with LiveServer(_app(rt)) as live:
        httpx.post(live.url + "/search", json={"query": "while loops"})
        text = httpx.get(live.url + "/metrics").text
    fp = rt.model("old").fingerprint.id
    assert f'crossfade_index_vectors{{fingerprint="{fp}",index="old"}} {float(N)}' in text
    assert 'crossfade_routing_mode{mode="shadow"} 1.0' in text
    assert "crossfade_coverage_ratio 0.0" in text
    assert 'crossfade_search_seconds_count{mode="shadow"} 1.0' in text
    assert "crossfade_shadow_overlap_at_10_count" in text
