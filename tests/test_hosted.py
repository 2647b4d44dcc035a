"""Hosted embedding models (kind: openai) against a real OpenAI-compatible server.

Infinity serves all-MiniLM-L6-v2 on 127.0.0.1 (loadtest/servers.py); faults come from a reverse
proxy between crossfade and it. Small on purpose: a few dozen passages of the demo corpus.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from loadtest.servers import SERVED_NAME, Infinity
from proxy.app import create_app
from proxy.availability import IndexState, serving_plan
from proxy.cli import spend_lines
from proxy.config import FusionConfig, Mode, ModelConfig
from proxy.demo import python_reference
from proxy.document import Doc
from proxy.embedding import load_embedder
from proxy.hosted import RateLimiter, backoff_s, retry_after_s
from proxy.ingest import ingest
from proxy.metrics import Metrics
from proxy.migration.canary import ModelDrift, check_canaries, drift_alarms
from proxy.migration.plan import plan
from proxy.migration.start import start_migration
from proxy.migration.status import migration_status, verify
from proxy.migration.worker import Reembedder, set_control
from proxy.model import Embedder, ModelUnavailable
from proxy.runtime import Runtime
from tests.helpers import RW, LiveServer, drain, hosted_settings, wait_for

KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}


def demo_docs(n: int, chars: int | None = None) -> list[Any]:
    """The first `n` passages of the demo corpus (454 in all), or their first `chars`
    characters."""
    docs = python_reference()[:n]
    return [Doc(d.doc_id, d.text[:chars], d.metadata) for d in docs] if chars else docs


def hosted(url: str, **cfg: Any) -> Embedder:
    return load_embedder(
        ModelConfig(kind="openai", base_url=url, model=SERVED_NAME, batch_size=8, **cfg)
    )


def migrating(
    tmp: Path, url: str, models: dict, n: int = 80, docs: list[Any] | None = None, **new: Any
) -> Runtime:
    """Old index (local ONNX model) of `docs` (default: `n` passages), migration started to
    the hosted model."""
    settings = hosted_settings(tmp / "data", url, **new)
    rt = Runtime(settings, {"old": models["old"]})
    ingest(rt, "old", docs or demo_docs(n), progress=False)
    start_migration(rt, progress=False)
    return rt


# -- pure: rate limits, Retry-After, backoff, the serving plan -----------------------------


def test_rate_limiter_paces_tokens_and_requests() -> None:
    now = [0.0]
    lim = RateLimiter(rpm=60, tpm=600, clock=lambda: now[0])
    assert lim.reserve(100) == 0  # the first goes at once
    assert lim.reserve(100) == pytest.approx(10.0)  # 100 tokens at 600/min = 10 s
    lim2 = RateLimiter(rpm=120, tpm=0, clock=lambda: now[0])
    assert [lim2.reserve(1) for _ in range(3)] == pytest.approx([0.0, 0.5, 1.0])
    # The real count moves the schedule: 100 estimated, 400 billed = 30 s more.
    lim3 = RateLimiter(rpm=0, tpm=600, clock=lambda: now[0])
    lim3.reserve(100)
    lim3.settle(100, 400)
    assert lim3.reserve(1) == pytest.approx(40.0)


def test_retry_after_and_backoff() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({}) is None
    assert 2.0 <= backoff_s(0, 0.5, 2.0, 30.0) <= 2.2  # the server's word wins
    assert 30.0 <= backoff_s(0, 0.5, 86400.0, 30.0) <= 33.0  # up to a cap: not a day
    waits = [backoff_s(a, 0.5, None, 30.0) for a in range(8)]
    assert 0.25 <= waits[0] <= 0.5 and 1.0 <= waits[2] <= 2.0 and max(waits) <= 30.0


UP = IndexState(True, True)


@pytest.mark.parametrize(
    ("mode", "bm25_alone", "lists", "error"),
    [
        (Mode.FUSED, True, ("old", "bm25"), None),
        (Mode.NEW, True, ("bm25",), None),
        (Mode.NEW, False, (), "model x unavailable"),
        (Mode.OLD, True, ("old",), None),  # the old list needs no new model
    ],
)
def test_serving_plan_without_the_new_model(
    mode: Mode, bm25_alone: bool, lists: tuple, error: str | None
) -> None:
    down = {"new": "model x unavailable: connection refused"}
    p = serving_plan(mode, FusionConfig(), {"old": UP, "new": UP}, down, bm25_alone)
    assert p.lists == lists
    assert (error in (p.error or "")) if error else p.error is None
    if lists and mode is not Mode.OLD:
        assert p.degraded == "new model unavailable"


# -- the adapter against the real server ---------------------------------------------------


def test_hosted_vectors_equal_the_local_model(infinity: Infinity, models: dict) -> None:
    texts = [d.text for d in demo_docs(40)]
    model = hosted(infinity.url)
    assert model.hosted and model.fingerprint.dim == 384
    out = model.embed_billed(texts)
    local = models["new"].embed_documents(texts)
    cos = np.sum(out.vectors * local, axis=1)
    assert cos.min() >= 0.9999, cos.min()
    assert out.tokens == sum(len(t) for t in texts)  # Infinity's usage counts characters
    q = model.embed_queries(["how do I catch an exception"])
    assert float(q[0] @ models["new"].embed_queries(["how do I catch an exception"])[0]) > 0.9999
    # Matryoshka: 128 dimensions asked, cut by the server, renormalised here.
    short = hosted(infinity.url, dimensions=128)
    assert short.fingerprint.dim == 128 and short.fingerprint.id != model.fingerprint.id
    v = short.embed_documents(texts[:5])
    ref = local[:5, :128] / np.linalg.norm(local[:5, :128], axis=1, keepdims=True)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.sum(v * ref, axis=1).min() >= 0.9999


def test_api_key_is_never_printed(
    infinity: Infinity, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-9f8e7d6c5b4a-never-print-me"
    monkeypatch.setenv("CROSSFADE_MODELS__NEW__API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    settings = hosted_settings(Path("/nonexistent"), infinity.url)
    assert settings.models.new.api_key is not None
    assert settings.models.new.api_key.get_secret_value() == secret  # from the environment
    model = load_embedder(settings.models.new)
    model.embed_documents(["a"])
    seen = " ".join(
        [repr(settings), str(settings.model_dump()), model.fingerprint.id, repr(model.fingerprint)]
        + [r.getMessage() for r in caplog.records]
        + [str(model.describe())]
    )
    assert secret not in seen


def test_failing_requests_leave_their_documents_queued(
    tmp_path: Path, fault_proxy: Any, models: dict
) -> None:
    rt = migrating(tmp_path, fault_proxy.url, models, n=24, max_retries=2)
    worker = Reembedder(rt)
    fault_proxy.p500 = 1.0  # every request fails, every retry too
    with pytest.raises(ModelUnavailable, match="HTTP 500 after 3 tries"):
        worker.step()
    assert rt.store("new").count(dense_only=True) == 0
    assert rt.state.depth()["total"] == 24  # nothing lost: all still queued, claimable now
    assert "stay queued" in (worker.stats.last_error or "")
    assert worker.stats.failed_requests == 3  # 24 docs = 3 requests of 8
    fault_proxy.p500 = 0.0
    assert drain(worker) == 24
    assert rt.store("new").count(dense_only=True) == 24
    rt.close()


def test_migration_through_429s_and_500s_embeds_every_document_once(
    tmp_path: Path, fault_proxy: Any, models: dict
) -> None:
    """Must-show 3: 20% of requests 429 (Retry-After), 5% 500 (half after the server did the
    work): the migration completes, every document embedded (and written) exactly once,
    `verify` clean."""
    # 240 passages: 30 requests of 8, enough for the seeded faults to hit both kinds; their
    # first 300 characters, since Infinity embedding them (on this machine's CPU) is the time.
    docs = demo_docs(240, chars=300)
    rt = migrating(tmp_path, fault_proxy.url, models, docs=docs, max_concurrent_requests=4)
    fault_proxy.reset()
    fault_proxy.p429, fault_proxy.p500, fault_proxy.retry_after = 0.2, 0.05, "1"
    worker = Reembedder(rt)
    assert drain(worker) == len(docs)
    assert fault_proxy.faults["429"] > 0 and fault_proxy.faults["500"] > 0, fault_proxy.faults
    # Each document's text came back embedded exactly as often as documents carry it (once,
    # but for passages that repeat verbatim in the corpus): no retry wrote a document twice.
    assert fault_proxy.embedded_texts() == Counter(d.text for d in docs)
    assert worker.stats.processed == len(docs) and worker.stats.failed_requests == 0
    fault_proxy.reset()
    report = verify(rt, sample=32)
    assert report["ok"], report
    assert report["with_vector"] == report["documents"] == len(docs)
    rt.close()


def test_spend_cap_stops_the_backfill_and_resumes_when_raised(
    tmp_path: Path, fault_proxy: Any, models: dict
) -> None:
    """Must-show 4: price and max_spend set; the worker stops at the cap (within one batch),
    says so in status and metrics, and resumes when the cap is raised."""
    price = 1.0  # per million tokens; Infinity bills characters
    rt = migrating(tmp_path, fault_proxy.url, models, n=80, max_concurrent_requests=1)
    rt.settings.plan.price_per_million_tokens = price
    rt.settings.migration.max_spend = 0.02  # ~ 2-3 requests of 8 passages
    fault_proxy.reset()  # count from here: the probe and the canary are no re-embedding
    worker = Reembedder(rt)
    written = 0
    for _ in range(50):
        n = worker.step()
        if n == 0:
            break
        written += n
    status = migration_status(rt, worker)
    spend = status["spend"]
    assert spend["capped"] and worker.stats.state == "capped"
    assert 0 < written < 80
    batch_cost = max(t for _, t in fault_proxy.usage) / 1e6 * price
    assert 0.02 <= spend["cost"] <= 0.02 + batch_cost  # stopped within one batch of the cap
    assert spend["tokens"] == sum(t for _, t in fault_proxy.usage)  # billed = usage answered
    assert status["worker_state"] == "capped"
    (line,) = spend_lines(status)  # what `crossfade status` prints
    assert line.startswith(f"spend: {spend['tokens']} tokens") and "STOPPED at the cap" in line
    m = Metrics()
    status["routing"] = {"generation": 0, "mode": "fused", "split_percent": 0}
    m.update(status)
    assert m.spend_capped._value.get() == 1  # type: ignore[attr-defined]
    assert worker.step() == 0  # stays stopped
    set_control(rt.state, max_spend=1.0)  # what `crossfade backfill limit --max-spend 1` does
    assert drain(worker) == 80 - written
    assert not migration_status(rt, worker)["spend"]["capped"]
    # Durable, per migration: a fresh runtime over the same data reads the same sum.
    tokens = migration_status(rt, worker)["spend"]["tokens"]
    rt.close()
    again = Runtime(rt.settings, {"old": models["old"], "new": rt.model("new")})
    assert migration_status(again)["spend"]["tokens"] == tokens
    again.close()


def test_plan_measures_a_sample_through_the_api(
    tmp_path: Path, fault_proxy: Any, models: dict
) -> None:
    rt = migrating(tmp_path, fault_proxy.url, models, n=40)
    rt.settings.plan.price_per_million_tokens = 0.02
    fault_proxy.reset()
    out = plan(rt, sample=16)
    assert out["tokens"]["counted_by"].startswith("the API's usage")
    billed = sum(t for _, t in fault_proxy.usage[-2:])  # the sample: 2 requests of 8
    assert out["tokens"]["per_doc"] == pytest.approx(billed / 16, abs=0.1)
    assert out["api_cost"]["total"] == pytest.approx(out["tokens"]["total"] / 1e6 * 0.02, rel=0.01)
    rt.close()


# -- the canary: a silent model change under the same name ---------------------------------


def test_canary_drift_refuses_vector_writes_naming_the_model(
    tmp_path: Path, fault_proxy: Any, infinity: Infinity, models: dict
) -> None:
    """Must-show 5: the server behind the model's URL restarts with other vectors under the
    same name (the same weights, CLS pooling instead of mean): crossfade raises drift at
    start-up and refuses vector writes naming the model until an operator accepts."""
    rt = migrating(tmp_path, fault_proxy.url, models, n=24)
    assert check_canaries(rt)["new"] == {"min_cosine": pytest.approx(1.0, abs=1e-4), "drift": False}
    # Not warmed up: the drift is in its vectors, not its speed (the warm-up is ~15 s here).
    cls = Infinity(tmp_path / "infinity-cls.log", pooling="cls", warmup=False).start()
    try:
        fault_proxy.upstream = cls.url.rstrip("/")  # same URL, same name, other vectors
        settings = rt.settings.model_copy(deep=True)
        settings.server.admin_key = SecretStr(KEY)
        rt.close()
        app_rt = Runtime(settings, {"old": models["old"]})
        with LiveServer(create_app(app_rt)) as srv:
            st = wait_for(
                lambda: (
                    (s := httpx.get(srv.url + "/migration", timeout=30).json())["model_drift"] and s
                ),
                60,
                "drift at start-up",
            )
            alarm = st["model_drift"]["new"]
            assert alarm["model"] == SERVED_NAME and alarm["min_cosine"] < 0.999
            # The start-up check came before the backfill: not one vector of the changed model.
            assert app_rt.store("new").count(dense_only=True) == 0
            r = httpx.put(
                srv.url + "/documents",
                json={"documents": [{"id": "x1", "text": "a new passage"}]},
                headers=RW,
                timeout=30,
            )
            assert r.status_code == 409 and SERVED_NAME in r.json()["error"]
            assert "model drift" in r.json()["error"]
            metrics = httpx.get(srv.url + "/metrics", timeout=30).text
            assert f'crossfade_model_drift{{model="{SERVED_NAME}",side="new"}} 1.0' in metrics
            # The worker refuses too: nothing written while drifted.
            assert Reembedder(app_rt).step() == 0
            with pytest.raises(ModelDrift, match=SERVED_NAME):
                from proxy.ingest import ingest as ingest_new

                ingest_new(app_rt, "new", demo_docs(2), progress=False)
            # The operator decides: accept (the canary is recorded afresh), writes resume.
            r = httpx.post(
                srv.url + "/admin/canary", json={"action": "accept"}, headers=ADMIN, timeout=60
            )
            assert r.status_code == 200 and "new" in r.json()["lifted"]
            app_rt.drift_changed()
            assert drift_alarms(app_rt) == {}
            r = httpx.put(
                srv.url + "/documents",
                json={"documents": [{"id": "x1", "text": "a new passage"}]},
                headers=RW,
                timeout=60,
            )
            assert r.status_code == 200, r.text
    finally:
        cls.stop()
        fault_proxy.upstream = infinity.url.rstrip("/")


# -- the query path: the new model's server stopped under fused load -----------------------


@pytest.fixture
def serving(tmp_path: Path, fault_proxy: Any, models: dict) -> Iterator[tuple[str, Runtime]]:
    rt = migrating(tmp_path, fault_proxy.url, models, n=80, query_timeout_s=1.0)
    worker = Reembedder(rt)
    for _ in range(3):
        worker.step()  # a part re-embedded
    rt.state.set("paused", True)
    settings = rt.settings.model_copy(deep=True)
    settings.server.admin_key = SecretStr(KEY)
    rt.close()
    app_rt = Runtime(settings, {"old": models["old"]})
    with LiveServer(create_app(app_rt)) as srv:
        yield srv.url, app_rt


def _load(url: str, stop: threading.Event, out: list[tuple[int, str | None]]) -> None:
    queries = ["how do I catch an exception", "assert statement", "for loop else", "lambda"]
    i = 0
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            try:
                r = c.post(url + "/search", json={"query": queries[i % 4] + f" {i}", "k": 5})
                out.append((r.status_code, r.headers.get("x-crossfade-degraded")))
            except httpx.HTTPError as e:
                out.append((0, str(e)))
            i += 1


def test_new_model_down_during_fused_load_serves_degraded(
    serving: tuple[str, Runtime], fault_proxy: Any
) -> None:
    """Must-show 6: the new model's server stops answering (port closed, then a hang) under
    fused load: 0 failed requests, the answers in between marked degraded, and full fusion
    again once it is back."""
    url, _ = serving
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()
    clients = [threading.Thread(target=_load, args=(url, stop, results)) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        time.sleep(2)
        before = len(results)
        fault_proxy.stop()  # the server is gone: connection refused
        time.sleep(4)
        down = results[before:]
        fault_proxy.start()
        fault_proxy.hang = True  # back, but hanging: the per-request timeout serves around it
        time.sleep(4)
        fault_proxy.hang = False
        time.sleep(7)  # the model is tried again after its down period
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)
    assert results and all(status == 200 for status, _ in results), {
        s for s, _ in results if s != 200
    }
    degraded = [d for _, d in results if d]
    assert degraded and all(d == "new model unavailable" for d in degraded)
    assert any(d for _, d in down)
    assert not any(d for _, d in results[-8:]), "full fusion once the model answers again"
    r = httpx.post(url + "/search", json={"query": "exceptions", "k": 3}, timeout=30).json()
    assert "degraded" not in r and set(r["results"][0]["ranks"]) == {"old", "new", "bm25"}


def test_new_mode_serves_bm25_alone_or_503(tmp_path: Path, fault_proxy: Any, models: dict) -> None:
    rt = migrating(tmp_path, fault_proxy.url, models, n=24, query_timeout_s=1.0)
    drain(Reembedder(rt))
    settings = rt.settings.model_copy(deep=True)
    settings.server.admin_key = SecretStr(KEY)
    rt.close()
    for bm25_alone, status in ((True, 200), (False, 503)):
        settings.server.bm25_when_model_down = bm25_alone
        app_rt = Runtime(settings, {"old": models["old"]})
        with LiveServer(create_app(app_rt)) as srv:
            fault_proxy.stop()
            try:
                r = httpx.post(
                    srv.url + "/search",
                    json={"query": "assert statement", "k": 3, "mode": "new"},
                    timeout=30,
                )
            finally:
                fault_proxy.start()
            assert r.status_code == status, r.text
            if status == 200:
                body = r.json()
                assert body["degraded"] == "new model unavailable"
                assert set(body["results"][0]["ranks"]) == {"bm25"}
            else:
                assert "unavailable" in r.json()["error"]


def test_hosted_query_embedding_is_bounded_by_its_timeout(fault_proxy: Any) -> None:
    model = hosted(fault_proxy.url, query_timeout_s=0.5)
    fault_proxy.hang = True
    t0 = time.monotonic()
    try:
        with pytest.raises(ModelUnavailable):
            model.embed_queries(["hello"])
    finally:
        fault_proxy.hang = False
    assert time.monotonic() - t0 < 2.0
    asyncio.run(asyncio.sleep(0))
