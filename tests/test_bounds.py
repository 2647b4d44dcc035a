"""Bounded work per request, over real HTTP (uvicorn on 127.0.0.1, the embedded engine, real
models): a Qdrant query batch is bounded in searches and in the results they ask for together;
a delete by filter is refused past its bound before anything is deleted (and without paging
the whole collection); NaN and infinite query vectors are a 400; ids holding `/` can be
deleted; the old index retired by `finish --keep` is not served to anyone but the admin; and
/metrics serves cached figures instead of counting the indexes on every scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.demo import python_reference, write_eval_set
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.migration.worker import Reembedder
from proxy.runtime import Runtime
from tests.helpers import RW, LiveServer, demo_settings, drain
from tests.test_gate import checksum

ADMIN_KEY = "bounds-admin-key-0123456789"
ADMIN = {"api-key": ADMIN_KEY}
C = "/collections/crossfade"
METRICS_CACHE_S = 2.0
DELETE_BOUND = 5
TOPICS = ("for", "with", "try")  # 2 + 3 + 9 passages


def document(text: str) -> dict[str, Any]:
    return {"nearest": {"text": text, "model": "any"}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[tuple[str, Runtime]]:
    settings = demo_settings(
        tmp_path_factory.mktemp("bounds"),
        migration={"lazy": False, "backfill": False},
        server={"admin_key": ADMIN_KEY, "metrics_cache_s": METRICS_CACHE_S},
        qdrant_api={"raw_vectors": "pass", "max_delete_points": DELETE_BOUND},
    )
    rt = Runtime(settings, dict(models))
    docs = [d for d in python_reference() if d.metadata["topic"] in TOPICS]
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)
    rt.state.set("paused", True)
    with LiveServer(create_app(rt)) as srv:
        yield srv.url, rt
    rt.close()


def qdrant_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"status", "time"}, body
    return str(body["status"]["error"])


def test_a_query_batch_is_bounded(live: tuple[str, Runtime]) -> None:
    url, _ = live
    # The defaults: 64 searches at most, 2,000 results (offset + limit) over the batch.
    many = {"searches": [{"query": document(f"loop {i}"), "limit": 1} for i in range(65)]}
    error = qdrant_error(httpx.post(url + C + "/points/query/batch", json=many), 422)
    assert "at most 64 searches" in error and "max_batch_searches" in error
    deep = {"searches": [{"query": document(t), "limit": 1000} for t in ("a", "b", "c")]}
    error = qdrant_error(httpx.post(url + C + "/points/query/batch", json=deep), 422)
    assert "3000 results" in error and "max_batch_limit" in error
    offset = {"searches": [{"query": document(t), "limit": 10, "offset": 690} for t in "abc"]}
    assert "2100 results" in qdrant_error(
        httpx.post(url + C + "/points/query/batch", json=offset), 422
    )
    # Within the bounds: answered. One query alone may go to qdrant_api.max_limit.
    ok = {"searches": [{"query": document(t), "limit": 3} for t in ("for loop", "with")]}
    r = httpx.post(url + C + "/points/query/batch", json=ok, timeout=60)
    assert r.status_code == 200 and [len(x["points"]) for x in r.json()["result"]] == [3, 3]
    one = {"query": document("for loop"), "limit": 1000}
    assert httpx.post(url + C + "/points/query", json=one, timeout=60).status_code == 200
    # k and limit keep their bounds.
    assert httpx.post(url + "/search", json={"query": "x", "k": 101}).status_code == 422
    r = httpx.post(url + C + "/points/query", json={"query": document("x"), "limit": 1001})
    assert "max_limit" in qdrant_error(r, 400)


def test_a_delete_by_filter_is_bounded_before_it_deletes(
    live: tuple[str, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, rt = live
    before = checksum(rt)
    assert before["old"][0] > DELETE_BOUND
    # Count the ids the delete reads from the index it pages (the real store's page()).
    store, read = rt.store("old"), []
    real_page = store.page

    def page(*args: Any, **kw: Any) -> Any:
        views, nxt = real_page(*args, **kw)
        read.extend(v["doc_id"] for v in views)
        return views, nxt

    monkeypatch.setattr(store, "page", page)
    for body in (
        {"filter": {}},  # everything
        {"filter": {"must": [{"key": "metadata.topic", "match": {"value": "try"}}]}},  # 9
    ):
        error = qdrant_error(httpx.post(url + C + "/points/delete", json=body, headers=RW), 422)
        assert f"more than {DELETE_BOUND} points" in error and "narrow the filter" in error
        assert "nothing was deleted" in error
        assert len(read) == DELETE_BOUND + 1, read  # one past the bound, never the whole index
        read.clear()
    ids = {"points": [f"try#{i}" for i in range(DELETE_BOUND + 1)]}
    error = qdrant_error(httpx.post(url + C + "/points/delete", json=ids, headers=RW), 422)
    assert "max_delete_points" in error
    assert checksum(rt) == before
    # Within the bound it deletes (and the count says so).
    topic = {"must": [{"key": "metadata.topic", "match": {"value": "for"}}]}
    r = httpx.post(url + C + "/points/count", json={"filter": topic})
    assert r.json()["result"]["count"] == 2
    saved = rt.store("old").retrieve(["for#0", "for#1"])
    r = httpx.post(url + C + "/points/delete", json={"filter": topic}, headers=RW)
    assert r.status_code == 200, r.text
    assert httpx.post(url + C + "/points/count", json={"filter": topic}).json()["result"] == {
        "count": 0
    }
    assert checksum(rt)["old"][0] == before["old"][0] - 2
    docs = [{"id": d, "text": v["text"], "metadata": v["metadata"]} for d, v in saved.items()]
    assert httpx.put(url + "/documents", json={"documents": docs}, headers=RW).is_success


def test_nan_and_infinite_query_vectors_are_refused(live: tuple[str, Runtime]) -> None:
    url, rt = live
    dim = rt.store("old").info().dim  # type: ignore[union-attr]
    json_ct = {"content-type": "application/json"}
    fine = ", ".join(["0.1"] * dim)
    for bad in ("NaN", "Infinity", "-Infinity", "1e39"):  # 1e39: past float32's range
        vector = "[" + ", ".join([bad] + ["0.1"] * (dim - 1)) + "]"
        search = '{"query": ' + vector + ', "using": "dense", "limit": 3}'
        r = httpx.post(url + C + "/points/query", content=search.encode(), headers=json_ct)
        assert "NaN, infinite or out-of-range" in qdrant_error(r, 400), bad
        batch = '{"searches": [{"query": [' + fine + '], "using": "dense"}, ' + search + "]}"
        r = httpx.post(url + C + "/points/query/batch", content=batch.encode(), headers=json_ct)
        assert "NaN, infinite or out-of-range" in qdrant_error(r, 400), bad
        point = '{"points": [{"id": "nan-1", "vector": {"dense": ' + vector + "}}]}"
        r = httpx.put(url + C + "/points", content=point.encode(), headers={**json_ct, **RW})
        assert r.status_code == 400, bad
    assert rt.store("old").retrieve(["nan-1"]) == {}
    # A finite vector of the old model's dimension is searched (raw_vectors: pass).
    vector = rt.model("old").embed_queries(["for loop"])[0].tolist()
    r = httpx.post(url + C + "/points/query", json={"query": vector, "using": "dense", "limit": 3})
    assert r.status_code == 200 and len(r.json()["result"]["points"]) == 3, r.text


def test_ids_holding_a_slash_can_be_deleted(live: tuple[str, Runtime]) -> None:
    url, rt = live
    ids = ["docs/guide/intro.md", "a/b", "trailing/"]
    docs = [{"id": i, "text": f"A passage stored under {i}."} for i in ids]
    assert httpx.put(url + "/documents", json={"documents": docs}, headers=RW).is_success
    assert set(rt.store("old").retrieve(ids)) == set(ids)
    for path in ("docs/guide/intro.md", "a%2Fb", "trailing/"):
        r = httpx.delete(url + "/documents/" + path, headers=RW)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["existed"] == {"old": 1, "new": 1}, path
    assert rt.store("old").retrieve(ids) == {} and rt.store("new").retrieve(ids) == {}


def test_metrics_serve_cached_figures(live: tuple[str, Runtime]) -> None:
    url, _ = live

    def figures() -> tuple[float, float]:
        """Vectors in the old index (summed over fingerprints), and PUT /documents answered."""
        text = httpx.get(url + "/metrics", timeout=30).text
        vectors = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("crossfade_index_vectors{") and 'index="old"' in line
        )
        puts = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("crossfade_http_requests_total{")
            and 'route="/documents"' in line
            and 'status="200"' in line
        )
        return vectors, puts

    time.sleep(METRICS_CACHE_S)  # the figures of an earlier test are stale now
    vectors, puts = figures()
    doc = {"documents": [{"id": "metrics-1", "text": "A passage counted late."}]}
    assert httpx.put(url + "/documents", json=doc, headers=RW).is_success
    t0 = time.monotonic()
    cached, puts_now = figures()
    assert time.monotonic() - t0 < METRICS_CACHE_S
    assert cached == vectors  # computed at most once per metrics_cache_s
    assert puts_now == puts + 1  # request counters are always live
    time.sleep(METRICS_CACHE_S)
    assert figures()[0] == vectors + 1
    assert httpx.delete(url + "/documents/metrics-1", headers=RW).is_success


def test_the_retired_index_is_the_admins_alone(tmp_path: Path, models: dict) -> None:
    settings = demo_settings(
        tmp_path,
        migration={"lazy": False, "backfill": True},
        server={"admin_key": ADMIN_KEY},
    )
    with Runtime(settings, dict(models)) as rt:
        docs = [d for d in python_reference() if d.metadata["topic"] in ("for", "with")]
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, progress=False)
        drain(Reembedder(rt))
        labelled = write_eval_set(tmp_path / "eval", docs)
        with LiveServer(create_app(rt)) as srv:

            def post(path: str, body: dict[str, Any]) -> httpx.Response:
                return httpx.post(srv.url + path, json=body, headers=ADMIN, timeout=300)

            old = {"query": "for loop", "k": 3, "mode": "old"}
            assert httpx.post(srv.url + "/search", json=old).status_code == 200  # still live
            cut = post("/admin/cutover", {"beir": str(labelled), "force": True})
            assert cut.status_code == 200, cut.text
            fin = post("/admin/finish", {"now": True, "drop": False})
            assert fin.status_code == 200, fin.text
            assert (tmp_path / "old").exists()  # kept, unused
            for mode in ("old", "fused", "shadow"):
                for headers in ({}, RW):
                    r = httpx.post(srv.url + "/search", json={**old, "mode": mode}, headers=headers)
                    assert r.status_code == 403, (mode, r.text)
                    assert "retired" in r.json()["error"] and "admin key" in r.json()["error"]
            r = httpx.post(srv.url + "/search", json=old, headers=ADMIN)
            assert r.status_code == 200 and r.json()["mode"] == "old"
            r = httpx.post(srv.url + "/search", json={"query": "for loop", "k": 3})
            assert r.status_code == 200 and r.json()["mode"] == "new"
