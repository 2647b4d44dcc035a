"""Faults without loss: an index that can't be reached, a model that can't load.

Real models, real HTTP on 127.0.0.1. An unreachable Qdrant is `backend: qdrant` on a closed
loopback port (connection refused) or on a socket that accepts and never answers (timeout).
Coming back is played by a real embedded store behind a switch (no Qdrant server runs here).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.app import create_app
from proxy.availability import IndexState, serving_plan
from proxy.config import FusionConfig, Mode
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from proxy.store import IndexUnavailable
from tests.helpers import ROOT, RW, LiveServer, demo_settings, free_port, wait_for

TOPICS = ("assert", "assignment", "exceptions", "for", "with", "lambda", "import", "try")
KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
T = 15.0  # every HTTP call is bounded


# -- the plan, as a table ------------------------------------------------------------------

UP = IndexState(True, True)
MISSING = IndexState(True, False)
DOWN = IndexState(False, None, "x index unreachable: qdrant at http://h: connection refused")


@pytest.mark.parametrize(
    ("mode", "old", "new", "lists", "degraded"),
    [
        (Mode.FUSED, UP, UP, ("old", "new", "bm25"), None),
        (Mode.FUSED, DOWN, UP, ("new", "bm25"), "old index unreachable"),
        (Mode.FUSED, UP, DOWN, ("old",), "new index unreachable"),
        (Mode.OLD, DOWN, UP, ("new", "bm25"), "old index unreachable"),
        (Mode.SHADOW, DOWN, UP, ("new", "bm25"), "old index unreachable"),
        (Mode.OLD, UP, DOWN, ("old",), None),
        (Mode.NEW, UP, DOWN, ("old",), "new index unreachable"),
        (Mode.NEW, DOWN, UP, ("new", "bm25"), None),
    ],
)
def test_serving_plan(
    mode: Mode, old: IndexState, new: IndexState, lists: tuple, degraded: str | None
) -> None:
    plan = serving_plan(mode, FusionConfig(), {"old": old, "new": new})
    assert (plan.lists, plan.degraded, plan.error) == (lists, degraded, None)


@pytest.mark.parametrize(
    ("mode", "old", "new", "error"),
    [
        (Mode.FUSED, DOWN, DOWN, "unreachable: qdrant at http://h: connection refused; x index"),
        (Mode.OLD, DOWN, MISSING, "connection refused"),  # no migration: nothing to fall to
        (Mode.FUSED, DOWN, MISSING, "connection refused"),
        (Mode.NEW, MISSING, DOWN, "connection refused"),
        (Mode.FUSED, UP, MISSING, "the new index does not exist"),
    ],
)
def test_serving_plan_refuses(mode: Mode, old: IndexState, new: IndexState, error: str) -> None:
    plan = serving_plan(mode, FusionConfig(), {"old": old, "new": new})
    assert plan.lists == () and plan.error and error in plan.error


# -- over HTTP -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Path:
    """Old and new index on the embedded engine: migration started, a third re-embedded,
    the worker paused. Each test copies it."""
    data = tmp_path_factory.mktemp("degraded") / "data"
    docs = [d for d in python_reference() if d.metadata["topic"] in TOPICS]
    with Runtime(demo_settings(data), dict(models)) as rt:
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, progress=False)
        ingest(rt, "new", docs[::3], progress=False)
        rt.state.set("paused", True)
    return data


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


def qdrant(url: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "qdrant", "url": url, "collection": "crossfade", **extra}


EDGE = {"old": {"backend": "edge", "path": "old"}, "new": {"backend": "edge", "path": "new"}}


@pytest.fixture
def serve(tmp_path: Path, template: Path, models: dict) -> Iterator[Any]:
    """serve(old=..., new=...) -> (url, runtime): a proxy over a copy of the template whose
    indexes are replaced as given (the others stay on the embedded engine)."""
    stack: list[LiveServer] = []

    def start(**indexes: Any) -> tuple[str, Runtime]:
        data = tmp_path / "data"
        shutil.copytree(template, data)
        # `new` serves alone here at a third's coverage: what is tested is reachability, so the
        # coverage rule (refused below cutover.min_coverage unless forced) is set aside.
        settings = demo_settings(
            data,
            indexes={**EDGE, **indexes},
            server={"admin_key": KEY},
            cutover={"min_coverage": 0},
        )
        rt = Runtime(settings, dict(models))
        live = LiveServer(create_app(rt)).__enter__()
        stack.append(live)
        return live.url, rt

    yield start
    for live in stack:
        live.__exit__(None, None, None)


def search(url: str, **body: Any) -> httpx.Response:
    return httpx.post(
        url + "/search", json={"query": "catch an exception", "k": 5, **body}, timeout=T
    )


def test_old_index_unreachable_serves_new_and_bm25(serve: Any) -> None:
    dead = dead_url()
    url, rt = serve(old=qdrant(dead))
    ready = httpx.get(url + "/readyz", timeout=T)
    assert ready.status_code == 503
    body = ready.json()
    assert body["error"] == f"old index unreachable: qdrant at {dead}: connection refused"
    assert body["ready"] is False and body["degraded"] == "old index unreachable"
    assert body["indexes"]["old"]["reachable"] is False
    assert body["indexes"]["new"] == {"reachable": True, "exists": True}

    t0 = time.monotonic()
    r = search(url)
    assert r.status_code == 200 and time.monotonic() - t0 < 5
    assert r.headers["x-crossfade-degraded"] == "old index unreachable"
    assert r.headers["x-crossfade-mode"] == "fused"
    res = r.json()
    assert res["degraded"] == "old index unreachable" and len(res["results"]) == 5
    for h in res["results"]:
        assert set(h["ranks"]) == {"new", "bm25"} and h["text"]
    assert any(h["ranks"]["bm25"] for h in res["results"])
    # Exactly the new-dense + BM25 fusion over the new index.
    alone = asyncio.run(
        rt.searcher().search("catch an exception", 5, Mode.FUSED, lists=("new", "bm25"))
    )
    assert [h["doc_id"] for h in res["results"]] == [h.doc_id for h in alone.hits]
    # `old` mode falls back to the new index too (BM25 covers every document); `new` needs
    # nothing that is down, so it is not degraded.
    old = search(url, mode="old")
    assert old.status_code == 200 and old.headers["x-crossfade-degraded"] == "old index unreachable"
    new = search(url, mode="new")
    assert new.status_code == 200 and "x-crossfade-degraded" not in new.headers
    assert "degraded" not in new.json()

    status = httpx.get(url + "/migration", timeout=T)
    assert status.status_code == 200
    s = status.json()
    assert (
        s["indexes"]["old"]["reachable"] is False
        and "connection refused" in s["indexes"]["old"]["error"]
    )
    assert s["indexes"]["new"]["documents"] == rt.store("new").count() > 0
    metrics = httpx.get(url + "/metrics", timeout=T)
    assert metrics.status_code == 200
    assert 'crossfade_index_up{index="old"} 0.0' in metrics.text
    assert 'crossfade_index_up{index="new"} 1.0' in metrics.text
    drift = httpx.get(url + "/drift", timeout=T)
    assert drift.status_code == 503 and "old index unreachable" in drift.json()["error"]

    # Writes are refused before they touch any index: nothing lands in the new one alone.
    before = rt.store("new").count()
    doc = {"id": "w1", "text": "A document written while the old index is down."}
    w = httpx.put(url + "/documents", json={"documents": [doc]}, headers=RW, timeout=T)
    assert w.status_code == 503 and w.json()["error"].startswith("old index unreachable")
    d = httpx.delete(url + "/documents/try%231", headers=RW, timeout=T)
    assert d.status_code == 503 and "old index unreachable" in d.json()["error"]
    assert rt.store("new").count() == before and rt.store("new").retrieve(["w1"]) == {}
    assert rt.store("new").retrieve(["try#1"]) != {}
    assert rt.journal.pending() == []


def test_new_index_unreachable_serves_old_and_the_worker_waits(serve: Any) -> None:
    url, rt = serve(new=qdrant(dead_url()))
    rt.state.set("paused", False)  # the worker runs into the dead index, and must live on
    ready = httpx.get(url + "/readyz", timeout=T)
    assert ready.status_code == 503 and ready.json()["error"].startswith("new index unreachable")
    r = search(url)
    assert r.status_code == 200 and r.headers["x-crossfade-degraded"] == "new index unreachable"
    assert all(set(h["ranks"]) == {"old"} for h in r.json()["results"])
    assert search(url, mode="old").headers.get("x-crossfade-degraded") is None
    assert search(url, mode="new").headers["x-crossfade-degraded"] == "new index unreachable"

    def worker_error() -> str | None:
        return httpx.get(url + "/migration", timeout=T).json()["worker"]["last_error"]

    assert "new index unreachable" in wait_for(worker_error, 20, "worker to meet the dead index")
    s = httpx.get(url + "/migration", timeout=T).json()
    assert s["indexes"]["new"]["coverage"] is None and s["remaining"] is None
    assert httpx.get(url + "/metrics", timeout=T).status_code == 200


def test_both_unreachable_is_503(serve: Any) -> None:
    old, new = dead_url(), dead_url()
    url, _ = serve(old=qdrant(old), new=qdrant(new))
    for mode in ("fused", "old", "new", "shadow"):
        r = search(url, mode=mode)
        assert r.status_code == 503, mode
        assert (
            "index unreachable" in r.json()["error"] and "connection refused" in r.json()["error"]
        )
    both = search(url).json()["error"]
    assert both == (
        f"old index unreachable: qdrant at {old}: connection refused; "
        f"new index unreachable: qdrant at {new}: connection refused"
    )
    assert search(url, mode="old").json()["error"].startswith("old index unreachable")
    ready = httpx.get(url + "/readyz", timeout=T)
    assert ready.status_code == 503 and ready.json()["error"] == both
    assert "degraded" not in ready.json()
    assert httpx.get(url + "/migration", timeout=T).status_code == 200
    assert httpx.get(url + "/metrics", timeout=T).status_code == 200
    one = {"documents": [{"id": "x", "text": "t"}]}
    w = httpx.put(url + "/documents", json=one, headers=RW, timeout=T)
    assert w.status_code == 503


def test_a_server_that_never_answers_times_out(serve: Any) -> None:
    """Accepts connections and never replies: every answer still comes within seconds."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        where = f"http://127.0.0.1:{hung.getsockname()[1]}"
        url, _ = serve(old=qdrant(where, timeout_s=1))
        t0 = time.monotonic()
        ready = httpx.get(url + "/readyz", timeout=T)
        assert ready.status_code == 503 and time.monotonic() - t0 < 5
        assert ready.json()["error"].startswith("old index unreachable")
        t0 = time.monotonic()
        r = search(url)
        assert r.status_code == 200 and time.monotonic() - t0 < 5
        assert r.headers["x-crossfade-degraded"] == "old index unreachable"


class Switch:
    """A real store behind a switch: while `down`, every call fails as an unreachable
    server would (the embedded engine itself can't go away)."""

    def __init__(self, inner: Any, side: str) -> None:
        self.inner, self.side, self.down = inner, side, False

    def _check(self) -> None:
        if self.down:
            raise IndexUnavailable(self.side, "qdrant at http://switch", "connection refused")

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._check()
            return attr(*args, **kwargs)

        return call


def test_an_index_that_comes_back_is_used_again_without_restart(
    tmp_path: Path, template: Path, models: dict
) -> None:
    data = tmp_path / "data"
    shutil.copytree(template, data)
    rt = Runtime(
        demo_settings(data, server={"admin_key": KEY}, migration={"batch_size": 4}), dict(models)
    )
    old, new = Switch(rt.store("old"), "old"), Switch(rt.store("new"), "new")
    rt._stores.update(old=old, new=new)  # type: ignore[dict-item]
    with LiveServer(create_app(rt)) as live:
        url = live.url
        assert httpx.get(url + "/readyz", timeout=T).status_code == 200
        old.down = True
        # Within the health cache (1 s) a search may still try the old index: it fails over.
        r = search(url)
        assert r.status_code == 200 and r.headers["x-crossfade-degraded"] == "old index unreachable"
        assert httpx.get(url + "/readyz", timeout=T).status_code == 503
        old.down = False
        wait_for(lambda: httpx.get(url + "/readyz", timeout=T).status_code == 200, 10, "ready")
        r = search(url)
        assert r.status_code == 200 and "x-crossfade-degraded" not in r.headers
        assert set(r.json()["results"][0]["ranks"]) == {"old", "new", "bm25"}

        # The worker waits out a dead new index, then goes on where it was.
        new.down = True
        migrated = new.inner.count(dense_only=True)
        httpx.post(url + "/migration/backfill", headers=ADMIN, json={"action": "resume"}, timeout=T)

        def worker() -> dict[str, Any]:
            return httpx.get(url + "/migration", timeout=T).json()["worker"]

        wait_for(lambda: "new index unreachable" in (worker()["last_error"] or ""), 20, "wait")
        assert new.inner.count(dense_only=True) == migrated
        new.down = False
        wait_for(lambda: new.inner.count(dense_only=True) > migrated, 60, "worker resumes")
        wait_for(lambda: worker()["last_error"] is None, 20, "error cleared")


# -- a model that can't load stops start-up ------------------------------------------------


def bad_model_config(tmp_path: Path, side: str, **model: Any) -> tuple[Path, int]:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    port = free_port()
    cfg["data_dir"] = str(tmp_path / "data")
    cfg["server"] = {"port": port, "admin_key": KEY}
    cfg["models"][side].update(model)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, port


@pytest.mark.parametrize(
    ("side", "case"),
    [("new", "missing path"), ("old", "corrupt onnx"), ("old", "wrong output name")],
)
def test_a_model_that_cannot_load_stops_start_up(tmp_path: Path, side: str, case: str) -> None:
    if case == "missing path":
        model, named = {"path": str(tmp_path / "no-such-model")}, str(tmp_path / "no-such-model")
    elif case == "corrupt onnx":
        corrupt = tmp_path / "corrupt.onnx"
        corrupt.write_bytes(b"\x08\x07not a protobuf" * 300)
        model, named = {"path": str(corrupt)}, str(corrupt)
    else:
        model, named = {"output": "no-such-output"}, "no-such-output"
    config, port = bad_model_config(tmp_path, side, **model)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and time.monotonic() - t0 < 120
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    lines = [ln for ln in err.splitlines() if ln.startswith("crossfade:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"crossfade: error: {side} model: cannot load") and named in lines[0]
    assert "serving mode=" not in err  # uvicorn was never started
    with socket.socket() as s, pytest.raises(OSError):
        s.connect(("127.0.0.1", port))
