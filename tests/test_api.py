"""The HTTP API over real HTTP: uvicorn on 127.0.0.1, real models, the embedded engine."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from proxy.api.lifecycle import warm_indexes
from proxy.app import create_app
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from proxy.store.doc_ids import FILE as DOC_IDS
from tests.helpers import RW, LiveServer, demo_settings, wait_for

TOPICS = ("assert", "assignment", "exceptions", "for", "with", "lambda", "import", "try")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[tuple[str, Runtime]]:
    docs = [d for d in python_reference() if d.metadata["topic"] in TOPICS]
    # No background migration here: these tests need a fixed coverage.
    settings = demo_settings(
        tmp_path_factory.mktemp("api"), migration={"lazy": False, "backfill": False}
    )
    rt = Runtime(settings, models)
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)  # lazy: as the config says (off)
    ingest(rt, "new", docs[::3], progress=False)  # a third already migrated
    with LiveServer(create_app(rt)) as live:
        yield live.url, rt


def test_start_up_warms_both_indexes_search_files(
    server: tuple[str, Runtime], caplog: pytest.LogCaptureFixture
) -> None:
    """What the lifespan runs before serving: each index's doc-id map, dense vectors and
    graph read."""
    _, rt = server
    dense = [
        f
        for index in (rt.settings.indexes.old, rt.settings.indexes.new)
        for f in rt.settings.data_path(index.path or "").rglob("*")
        if f.is_file()
        and (
            {"vector_storage-dense", "vector_index-dense"} & set(f.parts)
            or f.name.startswith(DOC_IDS)
        )
    ]
    size = sum(f.stat().st_size for f in dense)
    with caplog.at_level(logging.INFO, logger="crossfade"):
        warm_indexes(rt)
    assert size > 0 and f"index files warmed: {size / 2**20:.1f} MB" in caplog.text


def counts(rt: Runtime) -> tuple[int, int, int]:
    return rt.store("old").count(), rt.store("new").count(), rt.store("new").count(dense_only=True)


def test_health_and_readiness(server: tuple[str, Runtime]) -> None:
    url, _ = server
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(url + "/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


def test_fused_search_returns_provenance(server: tuple[str, Runtime]) -> None:
    url, rt = server
    r = httpx.post(url + "/search", json={"query": "how to raise an exception", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert r.headers["x-crossfade-mode"] == "fused"
    cov = float(r.headers["x-crossfade-coverage"])
    _, total, migrated = counts(rt)
    assert cov == pytest.approx(migrated / total, abs=1e-3) and 0 < cov < 1
    assert len(body["results"]) == 5
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    with_vector = rt.store("new").with_dense([h["doc_id"] for h in body["results"]])
    for h in body["results"]:
        assert set(h["ranks"]) == {"old", "new", "bm25"} and h["text"]
        assert any(v is not None for v in h["ranks"].values())
        # `migrated` is the store's truth, whichever lists the doc came from
        assert h["migrated"] == (h["doc_id"] in with_vector)
    assert any(h["metadata"]["topic"] in ("exceptions", "try") for h in body["results"][:3])


def test_modes_and_text_opt_out(server: tuple[str, Runtime]) -> None:
    url, rt = server
    old = httpx.post(url + "/search", json={"query": "lambda expressions", "mode": "old"}).json()
    assert old["mode"] == "old" and old["results"]
    assert all(set(h["ranks"]) == {"old"} and not h["migrated"] for h in old["results"])
    body = {"query": "lambda expressions", "mode": "new", "with_text": False}
    # A third migrated, below cutover.min_coverage: `new` alone would miss two thirds of the
    # corpus, so it is refused per request unless forced, and a forced answer says so.
    _, total, migrated = counts(rt)
    required = rt.settings.cutover.min_coverage
    coverage = f"coverage {100 * migrated / total:.2f}% < required {required:g}%"
    refused = httpx.post(url + "/search", json=body)
    assert refused.status_code == 409
    assert coverage in refused.json()["error"] and "force: true" in refused.json()["error"]
    forced = httpx.post(url + "/search", json={**body, "force": True})
    assert forced.status_code == 200
    new = forced.json()
    assert new["mode"] == "new" and all(h["text"] is None for h in new["results"])
    assert all(set(h["ranks"]) == {"new", "bm25"} for h in new["results"])
    assert new["degraded"] == f"new index {coverage}"
    assert forced.headers["x-crossfade-degraded"] == new["degraded"]


def test_filter_on_metadata(server: tuple[str, Runtime]) -> None:
    url, _ = server
    flt = {"must": [{"key": "topic", "match": {"value": "import"}}]}
    r = httpx.post(url + "/search", json={"query": "loop over a sequence", "k": 10, "filter": flt})
    assert r.status_code == 200 and r.json()["results"]
    assert {h["metadata"]["topic"] for h in r.json()["results"]} == {"import"}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"query": ""}, 422, "query"),
        ({"query": "   "}, 422, "query"),
        ({"query": "x" * 5000}, 422, "query"),
        ({"query": "ok", "k": 0}, 422, "k"),
        ({"query": "ok", "k": 101}, 422, "k"),
        ({"query": "ok", "kk": 3}, 422, "kk"),
        ({"query": "ok", "mode": "sideways"}, 422, "mode"),
        ({"query": "ok", "filter": {"must": [{"key": "topic"}]}}, 422, "filter"),
        (
            {"query": "ok", "filter": {"must": [{"key": "a;drop", "match": {"value": 1}}]}},
            422,
            "filter",
        ),
        ({"query": "ok", "filter": {}}, 422, "filter"),
        ({"query": 5}, 422, "query"),
        # Strict JSON types for the whole API: a string is not a number, nor a boolean.
        ({"query": "ok", "k": "3"}, 422, "k"),
        ({"query": "ok", "k": 3.0}, 422, "k"),
        ({"query": "ok", "with_text": "false"}, 422, "with_text"),
        ({"query": "ok", "reembed": 0}, 422, "reembed"),
        ({"query": "ok", "force": "yes"}, 422, "force"),
        ({"query": "ok", "filter": {"must": [{"key": "part", "range": {"gte": "2"}}]}}, 422, "gte"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    server: tuple[str, Runtime], body: dict, status: int, field: str
) -> None:
    url, rt = server
    before = counts(rt)
    r = httpx.post(url + "/search", json=body)
    assert r.status_code == status
    err = r.json()
    assert err["error"] and field in str(err.get("problems", err))
    assert counts(rt) == before


def test_non_json_and_oversized_bodies(server: tuple[str, Runtime]) -> None:
    url, rt = server
    before = counts(rt)
    r = httpx.post(
        url + "/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(
        url + "/search",
        content=b'{"query": "' + b"a" * 2_000_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert counts(rt) == before


def test_strict_types_accept_the_json_types_themselves(server: tuple[str, Runtime]) -> None:
    url, _ = server
    flt = {"must": [{"key": "part", "range": {"gte": 1}}]}  # an integer bound for a float: fine
    body = {"query": "for loop", "k": 3, "with_text": False, "mode": "old", "filter": flt}
    r = httpx.post(url + "/search", json=body)
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_filter_on_a_key_no_document_has_warns(server: tuple[str, Runtime]) -> None:
    url, rt = server
    typo = {"must": [{"key": "topik", "match": {"value": "import"}}]}
    r = httpx.post(url + "/search", json={"query": "import a module", "filter": typo})
    assert r.status_code == 200 and r.json()["results"] == []
    assert r.json()["warnings"] == ["unknown filter key 'topik': no document has this metadata key"]
    # A key some document has: no warning, whether or not anything matches.
    known = {"must": [{"key": "topic", "match": {"value": "no-such-topic"}}]}
    r = httpx.post(url + "/search", json={"query": "import a module", "filter": known})
    assert r.status_code == 200 and r.json()["results"] == [] and "warnings" not in r.json()
    mixed = {"must": [{"key": "topic", "match": {"value": "import"}}]}
    mixed["must_not"] = [{"key": "colour", "match": {"value": "red"}}]
    r = httpx.post(url + "/search", json={"query": "import a module", "filter": mixed})
    assert r.json()["results"] and r.json()["warnings"] == [
        "unknown filter key 'colour': no document has this metadata key"
    ]
    # The store knows a key as soon as a document holding it is written.
    doc = {"id": "colourful", "text": "A red passage about imports.", "metadata": {"colour": "red"}}
    assert httpx.put(url + "/documents", json={"documents": [doc]}, headers=RW).status_code == 200
    try:
        wait_for(
            lambda: (
                "warnings"
                not in httpx.post(
                    url + "/search", json={"query": "imports", "filter": mixed}
                ).json()
            ),
            10,
            "the new key to be known",
        )
    finally:
        assert httpx.delete(url + "/documents/colourful", headers=RW).status_code == 200


def test_metrics_endpoint(server: tuple[str, Runtime]) -> None:
    url, _ = server

    def value(text: str, series: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(series + " ")), None)
        return float(line.split()[-1]) if line else 0.0

    before = httpx.get(url + "/metrics").text
    httpx.post(url + "/search", json={"query": "for loop"})
    httpx.post(url + "/search", json={"query": "for loop", "mode": "old"})
    httpx.post(url + "/search", json={"query": "for loop", "k": "3"})
    httpx.delete(url + "/documents/nothing-here", headers=RW)
    httpx.get(url + "/nope")
    httpx.post(url + "/admin/mode", json={"mode": "old"})  # no key
    text = httpx.get(url + "/metrics").text
    assert 'crossfade_search_seconds_count{mode="fused"}' in text
    requests = "crossfade_http_requests_total"
    for labels, n in (
        ('mode="fused",route="/search",status="200"', 1),
        ('mode="old",route="/search",status="200"', 1),
        ('mode="none",route="/search",status="422"', 1),
        ('mode="none",route="/documents/{doc_id}",status="200"', 1),
        ('mode="none",route="unmatched",status="404"', 1),
        ('mode="none",route="/admin/mode",status="401"', 1),
    ):
        series = f"{requests}{{{labels}}}"
        assert value(text, series) - value(before, series) == n, series
    for kind in ("invalid", "not_found", "unauthorized"):
        series = f'crossfade_http_errors_total{{kind="{kind}"}}'
        assert value(text, series) - value(before, series) == 1, series
    assert "# TYPE crossfade_http_requests_total counter" in text


def test_bodies_not_declared_json_are_refused(server: tuple[str, Runtime]) -> None:
    """curl's `-d` declares a form: refused with 415 and how to send JSON (a form or
    text/plain POST is what any web page can send cross-site without a preflight)."""
    url, _ = server
    r = httpx.post(
        url + "/search",
        content=b'{"query": "with statement", "k": 2}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"]
