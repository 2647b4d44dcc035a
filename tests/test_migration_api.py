"""Migration over real HTTP: lazy enqueue from searches, backfill pause/resume/limit,
document writes, status. (Kills of the proxy process are in test_faults.py.)"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.config import Settings
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.helpers import RW, LiveServer, demo_settings, wait_for

N = 48
KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}


def api_settings(data: Path) -> Settings:
    return demo_settings(
        data, migration={"batch_size": 4, "max_docs_per_s": 20}, server={"admin_key": KEY}
    )


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Path:
    """N passages ingested, the migration started and its worker paused, built once: each test
    serves a copy."""
    data = tmp_path_factory.mktemp("migration-api") / "data"
    with Runtime(api_settings(data), dict(models)) as rt:
        ingest(rt, "old", python_reference()[:N], progress=False)
        start_migration(rt, progress=False)
        rt.state.set("paused", True)  # each test decides when the worker runs
    return data


@pytest.fixture
def server(tmp_path: Path, cached_models: dict, started: Path) -> Iterator[tuple[str, Runtime]]:
    data = Path(shutil.copytree(started, tmp_path / "data"))
    with Runtime(api_settings(data), dict(cached_models)) as rt, LiveServer(create_app(rt)) as live:
        yield live.url, rt


def status(url: str) -> dict:
    return httpx.get(url + "/migration").json()


def test_searches_enqueue_their_unmigrated_hits(server: tuple[str, Runtime]) -> None:
    url, rt = server
    body = httpx.post(url + "/search", json={"query": "assert statement", "k": 5}).json()
    returned = {h["doc_id"] for h in body["results"]}
    wait_for(lambda: status(url)["queue"]["hits"] == 5, 10, "hits enqueued")
    httpx.post(url + "/search", json={"query": "boolean operations", "k": 3, "reembed": False})
    assert status(url)["queue"]["hits"] == 5  # monitoring traffic does not enqueue
    httpx.post(
        url + "/migration/backfill", headers=ADMIN, json={"action": "resume", "backfill": False}
    )
    wait_for(lambda: status(url)["indexes"]["new"]["with_vector"] == 5, 60, "hits re-embedded")
    assert rt.store("new").with_dense(sorted(returned)) == returned
    again = httpx.post(url + "/search", json={"query": "assert statement", "k": 5}).json()
    assert all(h["migrated"] for h in again["results"] if h["doc_id"] in returned)


def test_backfill_pause_resume_and_limit(server: tuple[str, Runtime]) -> None:
    url, _ = server
    ctl = httpx.post(
        url + "/migration/backfill", headers=ADMIN, json={"action": "resume", "until": 50}
    ).json()
    assert ctl == {
        "paused": False,
        "lazy": True,
        "until": 50.0,
        "backfill": True,
        "max_spend": 0.0,
    }
    refused = httpx.post(url + "/migration/backfill", json={"action": "pause"})
    assert refused.status_code == 401
    wrong = httpx.post(
        url + "/migration/backfill",
        json={"action": "pause"},
        headers={"Authorization": "Bearer nope"},
    )
    assert wrong.status_code == 401 and status(url)["control"]["paused"] is False
    wait_for(lambda: status(url)["indexes"]["new"]["coverage"] >= 0.5, 60, "50% coverage")
    time.sleep(1.5)
    s = status(url)
    assert 0.5 <= s["indexes"]["new"]["coverage"] < 1.0  # the sweep stopped at its limit
    assert s["worker"]["processed"] >= N // 2
    # a rate only while re-embedding: at its limit the sweep has stopped, and the worker may
    # already be idle (rate 0) or still finishing its last batch (a rate above 0)
    assert (s["rate_docs_per_s"] > 0) == (s["worker_state"] == "running")
    httpx.post(url + "/migration/backfill", headers=ADMIN, json={"action": "pause", "until": 100})
    time.sleep(1.0)  # let an in-flight batch land
    before = status(url)["indexes"]["new"]["with_vector"]
    time.sleep(1.5)
    assert status(url)["indexes"]["new"]["with_vector"] == before  # paused means stopped
    httpx.post(url + "/migration/backfill", headers=ADMIN, json={"action": "resume"})
    wait_for(lambda: status(url)["indexes"]["new"]["coverage"] == 1.0, 60, "100% coverage")
    s = status(url)
    assert s["remaining"] == 0 and len(s["indexes"]["new"]["fingerprints"]) == 1


def test_document_writes_over_http(server: tuple[str, Runtime]) -> None:
    url, rt = server
    docs = {
        "documents": [
            {
                "id": "n1",
                "text": "Structural pattern matching with match and case.",
                "metadata": {"topic": "new"},
            }
        ]
    }
    r = httpx.put(url + "/documents", json=docs, headers=RW)
    assert r.status_code == 200 and r.json() == {"upserted": 1, "indexes": ["old", "new"]}
    hits = httpx.post(url + "/search", json={"query": "pattern matching case", "k": 3}).json()
    top = hits["results"][0]
    assert top["doc_id"] == "n1" and top["migrated"]
    r = httpx.delete(url + "/documents/n1", headers=RW)
    assert r.json()["existed"] == {"old": 1, "new": 1}
    assert rt.store("new").retrieve(["n1"]) == {}


@pytest.mark.parametrize(
    "body",
    [
        {"documents": []},
        {"documents": [{"id": "x", "text": ""}]},
        {"documents": [{"id": "x", "text": "ok", "extra": 1}]},
        {"documents": [{"id": "x", "text": "ok"}, {"id": "x", "text": "twice"}]},
        {"documents": [{"id": "x", "text": "ok", "metadata": "no"}]},
        {"documents": [{"id": f"d{i}", "text": "t"} for i in range(257)]},
        {"docs": []},
    ],
)
def test_bad_document_writes_change_nothing(server: tuple[str, Runtime], body: dict) -> None:
    url, rt = server
    before = rt.store("old").count(), rt.store("new").count()
    r = httpx.put(url + "/documents", json=body, headers=RW)
    assert r.status_code == 422 and r.json()["error"]
    assert (rt.store("old").count(), rt.store("new").count()) == before
