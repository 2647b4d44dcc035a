"""A replica through an outage of the fleet's state store: a real PostgreSQL of this test's
own (pgserver), stopped under a live replica (in-process, over real HTTP) and started again on
the same data directory, in front of an index every process could share (Qdrant, local mode).

What it shows: with the state store down, searches still answer 200, marked degraded (the
header names the state store and the generation served); a control change is refused 503 and
changes nothing (pointer, alias); a document write is refused 5xx and neither index changes.
With PostgreSQL back, the replica is no longer degraded within a few seconds, and control
changes and writes work again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.servers import start_postgres
from proxy.app import create_app
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.helpers import RW, LiveServer, demo_settings, wait_for

N = 16
KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def pg(pg_dir: Path) -> Iterator[dict[str, Any]]:
    """A private PostgreSQL: `server` (replaced when the test starts it again), `dir`."""
    held = {"dir": pg_dir, "server": start_postgres(pg_dir)}
    yield held
    held["server"].cleanup()


def search(url: str) -> httpx.Response:
    res = httpx.post(url + "/search", json={"query": "assert statement", "k": 3}, timeout=30)
    assert res.status_code == 200, res.text
    return res


def put(url: str, doc_id: str, text: str) -> httpx.Response:
    return httpx.put(
        url + "/documents",
        headers=RW,
        json={"documents": [{"id": doc_id, "text": text}]},
        timeout=30,
    )


def test_a_replica_rides_out_a_state_store_outage(
    tmp_path: Path, pg: dict[str, Any], cached_models: dict, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = demo_settings(
        tmp_path / "data",
        indexes={
            "old": {"backend": "qdrant", "url": ":memory:", "collection": f"out_{tag}_v1"},
            "new": {"backend": "qdrant", "url": ":memory:", "collection": f"out_{tag}_v2"},
        },
        state={"url": pg["server"].get_uri(), "poll_s": 0.2, "connect_timeout_s": 1.0},
        server={"admin_key": KEY},
    )
    docs = python_reference()[:N]
    edited = docs[0].doc_id
    with Runtime(settings, dict(cached_models)) as rt:
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, progress=False)
        rt.state.set("paused", True)  # no re-embeds: the indexes change only by the writes
        old, new = rt.store("old"), rt.store("new")
        alias = f"{new.collection}_serving"  # type: ignore[attr-defined]

        def indexes() -> dict[str, Any]:
            """Both indexes as the test compares them: counts and the edited document."""
            return {
                side: (s.count(), s.retrieve([edited, "outage-new"], ["text", "text_sha256"]))
                for side, s in (("old", old), ("new", new))
            }

        with LiveServer(create_app(rt)) as live:
            url = live.url
            r = httpx.post(url + "/admin/mode", headers=ADMIN, json={"mode": "fused"})
            assert r.status_code == 200, r.text
            assert put(url, edited, "the text before the outage").status_code == 200
            gen = int(search(url).headers["X-Crossfade-Generation"])
            assert "X-Crossfade-Degraded" not in search(url).headers
            routing = httpx.get(url + "/admin/routing", headers=ADMIN).json()
            assert new.alias_target(alias) == old.collection  # type: ignore[attr-defined]
            before = indexes()
            assert before["new"][1][edited]["text"] == "the text before the outage"

            # -- PostgreSQL down ----------------------------------------------------------
            pg["server"].cleanup()
            wait_for(lambda: "X-Crossfade-Degraded" in search(url).headers, 10, "marked degraded")
            res = search(url)
            degraded = res.headers["X-Crossfade-Degraded"]
            assert "state store" in degraded and f"generation {gen}" in degraded, degraded
            assert int(res.headers["X-Crossfade-Generation"]) == gen
            assert res.json()["results"]

            r = httpx.post(url + "/admin/mode", headers=ADMIN, json={"mode": "new", "force": True})
            assert r.status_code == 503, r.text
            assert "state store" in r.text
            assert httpx.get(url + "/admin/routing", headers=ADMIN).json() == routing
            assert new.alias_target(alias) == old.collection  # type: ignore[attr-defined]

            for doc_id in (edited, "outage-new"):
                w = put(url, doc_id, "a text written during the outage")
                assert w.status_code == 503, w.text
            assert indexes() == before
            # Searches' background work (enqueueing their hits) failed quietly, each failure
            # retrieved: no "Task exception was never retrieved" from asyncio.
            assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text

            # -- PostgreSQL back, on the same data directory ------------------------------
            pg["server"] = start_postgres(pg["dir"])
            wait_for(lambda: "X-Crossfade-Degraded" not in search(url).headers, 5, "not degraded")
            r = httpx.post(url + "/admin/mode", headers=ADMIN, json={"mode": "new", "force": True})
            assert r.status_code == 200, r.text
            assert r.json()["to"]["generation"] == gen + 1
            assert int(search(url).headers["X-Crossfade-Generation"]) == gen + 1
            assert new.alias_target(alias) == new.collection  # type: ignore[attr-defined]
            assert put(url, edited, "the text after the outage").status_code == 200
            after = indexes()
            for side in ("old", "new"):
                assert after[side][1][edited]["text"] == "the text after the outage"
