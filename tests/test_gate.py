"""Nobody in, nothing lost: every route that changes data, crossfade's and Qdrant's, refuses a
request without a key (401), with a read-only key (403), with a body that is not declared JSON
(415) and with a foreign Host header (400), and both indexes are bit for bit what they were
(ids, payloads and vectors); an unmodified qdrant-client app with a read-only key searches and
gets Qdrant's 403 on upsert. Real HTTP to uvicorn on 127.0.0.1, the embedded engine, real
models."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import qdrant_edge as qe
from chromadb.errors import error_types as chroma_error_types
from fastapi.routing import APIRoute
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from proxy.api.middleware import STATE_CHANGING
from proxy.app import create_app, need_of
from proxy.chroma_api.collection import ServedCollection
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from proxy.security import Access
from tests.helpers import RW_KEY, LiveServer, demo_settings

ADMIN_KEY = "gate-admin-key-0123456789"
RO_KEY = "gate-read-only-key-0123456789"
ADMIN = {"api-key": ADMIN_KEY}
RO = {"api-key": RO_KEY}
RW = {"Authorization": f"Bearer {RW_KEY}"}  # the other way Qdrant clients send a key
C = "/collections/crossfade"  # the Qdrant collection name (the old index's)
# Chroma's API: the served collection (the old index's) under Chroma's default tenant/database.
CHROMA = ServedCollection.of(demo_settings(Path("/nonexistent")), 384)
CDB = f"/api/v2/tenants/{CHROMA.tenant}/databases/{CHROMA.database}"
CC = f"{CDB}/collections/{CHROMA.id}"
DOC = {"text": "A new passage about loops.", "model": "any"}

# Every route that changes data, with a body that would change it if it were accepted (the
# filter {} delete would empty both indexes). The test checks this list against the app.
WRITES: list[tuple[str, str, Any, Access]] = [
    ("PUT", "/documents", {"documents": [{"id": "gate-x", "text": "new text"}]}, Access.WRITE),
    ("DELETE", "/documents/for%230", None, Access.WRITE),
    ("PUT", C + "/points", {"points": [{"id": "gate-q", "vector": DOC}]}, Access.WRITE),
    # an app's own vector with its text (LangChain, LlamaIndex): the same route, a write too
    (
        "PUT",
        C + "/points",
        {
            "points": [
                {"id": "gate-v", "vector": {"dense": [0.1] * 384}, "payload": {"text": "new text"}}
            ]
        },
        Access.WRITE,
    ),
    ("POST", C + "/points/delete", {"filter": {}}, Access.WRITE),
    ("POST", C + "/points/delete", {"points": ["for#1", "with#0"]}, Access.WRITE),
    # Chroma's record writes (chromadb's add / upsert / update / delete); the where {"n": {"$gte":
    # 0}} delete would empty both indexes of the demo's documents that carry a part number.
    ("POST", CC + "/add", {"ids": ["gate-c"], "documents": ["new text"]}, Access.WRITE),
    ("POST", CC + "/upsert", {"ids": ["for#0"], "documents": ["new text"]}, Access.WRITE),
    ("POST", CC + "/update", {"ids": ["for#0"], "metadatas": [{"topic": "x"}]}, Access.WRITE),
    (
        "POST",
        CC + "/add",
        {"ids": ["gate-cv"], "embeddings": [[0.1] * 384], "documents": ["new text"]},
        Access.WRITE,
    ),
    ("POST", CC + "/delete", {"where": {"part": {"$gte": 0}}}, Access.WRITE),
    ("POST", CC + "/delete", {"ids": ["for#1", "with#0"]}, Access.WRITE),
    # refused whatever the key (crossfade migrates the collection), but writes by intent
    ("PUT", CC, {"new_name": "renamed"}, Access.WRITE),
    ("DELETE", CDB + "/collections/crossfade", None, Access.WRITE),
    ("POST", "/migration/backfill", {"action": "resume"}, Access.ADMIN),
    ("POST", "/admin/mode", {"mode": "old"}, Access.ADMIN),
    ("POST", "/admin/split", {"mode": "old", "percent": 50}, Access.ADMIN),
    ("POST", "/admin/cutover", {"force": True}, Access.ADMIN),
    ("POST", "/admin/rollback", {}, Access.ADMIN),
    ("POST", "/admin/finish", {"now": True, "drop": True}, Access.ADMIN),
    ("POST", "/admin/canary", {"action": "accept"}, Access.ADMIN),
]


def plain(vector: Any) -> Any:
    """A record's vectors as JSON (dense lists, sparse {indices, values}), by name."""
    if isinstance(vector, dict):
        return {name: plain(v) for name, v in vector.items()}
    if isinstance(vector, qe.SparseVector):
        return {"indices": list(vector.indices), "values": list(vector.values)}
    return vector


def checksum(rt: Runtime) -> dict[str, tuple[int, str]]:
    """Per index: its point count and a digest of every point's id, payload and vectors."""
    out = {}
    for side in ("old", "new"):
        shard = rt.store(side).shard
        records, offset = [], None
        while True:
            recs, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=256, with_payload=True, with_vector=True)
            )
            records += [[str(r.id), r.payload, plain(r.vector)] for r in recs]
            if offset is None:
                break
        records.sort(key=lambda r: r[0])
        blob = orjson.dumps(records, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        out[side] = (len(records), hashlib.sha256(blob).hexdigest())
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[tuple[str, Runtime]]:
    settings = demo_settings(
        tmp_path_factory.mktemp("gate"),
        migration={"lazy": False, "backfill": False},
        server={"admin_key": ADMIN_KEY, "read_only_api_keys": [RO_KEY]},
    )
    rt = Runtime(settings, dict(models))
    docs = [d for d in python_reference() if d.metadata["topic"] in ("for", "with", "try")]
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)
    ingest(rt, "new", docs[::3], progress=False)  # a third migrated: dense vectors on both
    assert 0 < rt.store("new").count(dense_only=True) < len(docs)
    rt.state.set("paused", True)
    with LiveServer(create_app(rt)) as srv:
        yield srv.url, rt
    rt.close()


def send(url: str, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    content = None if body is None else orjson.dumps(body)
    return httpx.request(method, url + path, content=content, headers=headers, timeout=60)


def assert_shape(path: str, r: httpx.Response) -> None:
    body = r.json()
    if path.startswith("/collections"):  # Qdrant's error shape: qdrant-client raises on it
        assert set(body) == {"status", "time"} and isinstance(body["status"]["error"], str)
    elif path.startswith("/api/v2"):  # Chroma's: chromadb raises its own exception on it
        assert set(body) == {"error", "message"} and body["error"] in chroma_error_types
    else:
        assert isinstance(body["error"], str)


def test_the_list_holds_every_write_route(live: tuple[str, Runtime]) -> None:
    """Every state-changing route of the app is in WRITES, or one of the known reads."""

    def filled(path: str) -> str:
        path = path.replace("{collection_name}", "crossfade").replace("{collection_id}", CHROMA.id)
        return path.replace("{tenant}", CHROMA.tenant).replace("{database}", CHROMA.database)

    routes = {
        (m, filled(r.path_format)): need_of(r)
        for r in create_app(live[1]).routes
        if isinstance(r, APIRoute)
        for m in r.methods & STATE_CHANGING
    }
    listed = {(m, p.replace("for%230", "{doc_id}")): need for m, p, _, need in WRITES}
    # /v1/embeddings changes nothing: it embeds texts for an app (OpenAI's API), a read.
    # Chroma's create collection changes nothing either: it answers get_or_create of the
    # served collection, and refuses any other.
    reads = {("POST", "/search"), ("POST", "/v1/embeddings")} | {
        ("POST", C + p) for p in ("/points/query", "/points/query/batch", "/points/scroll",
                                  "/points/count", "/points")
    } | {("POST", CC + "/get"), ("POST", CC + "/query"),
         ("POST", CDB + "/collections")}  # fmt: skip
    assert routes == listed | dict.fromkeys(reads, Access.READ)


def test_writes_without_the_right_key_json_or_host_change_nothing(
    live: tuple[str, Runtime],
) -> None:
    url, rt = live
    before = checksum(rt)
    routing = httpx.get(url + "/admin/routing", headers=ADMIN).json()
    json_ct = {"content-type": "application/json"}
    for method, path, body, need in WRITES:
        where = f"{method} {path}"
        # No key at all (the cross-site case), and a key the proxy doesn't have: 401.
        for headers in ({}, {"api-key": "not-a-key-of-this-proxy"}):
            r = send(url, method, path, body, {**json_ct, **headers})
            assert r.status_code == 401, (where, r.text)
            assert_shape(path, r)
        # A read-only key (and a read-write one on the admin's routes): 403.
        for key in (RO, RW) if need is Access.ADMIN else (RO,):
            r = send(url, method, path, body, {**json_ct, **key})
            assert r.status_code == 403, (where, r.text)
            assert_shape(path, r)
            assert "key" in str(r.json())
        # The right key, but the body sent as a CORS simple request would send it: 415.
        strongest = ADMIN if need is Access.ADMIN else RW
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            if body is None:
                continue
            r = send(url, method, path, body, {"content-type": ctype, **strongest})
            assert r.status_code == 415, (where, ctype, r.text)
            assert_shape(path, r)
        if body is not None:  # a body with no Content-Type at all
            r = httpx.request(method, url + path, content=orjson.dumps(body), headers=strongest)
            assert r.status_code == 415, (where, r.text)
        # The right key and JSON, from a page whose name resolves here (DNS rebinding): 400.
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
            r = send(url, method, path, body, {**json_ct, **strongest, "host": host})
            assert r.status_code == 400, (where, host, r.text)
            assert_shape(path, r)
            assert "allowed_hosts" in str(r.json())
    assert checksum(rt) == before
    assert httpx.get(url + "/admin/routing", headers=ADMIN).json() == routing
    assert rt.state.get("retired") is None


def test_keys_grant_what_they_should(live: tuple[str, Runtime]) -> None:
    url, rt = live
    before = checksum(rt)
    # Reads are open on loopback (keys or none); a read-only key reads.
    for headers in ({}, RO, RW, ADMIN):
        r = httpx.post(url + "/search", json={"query": "for loop", "k": 2}, headers=headers)
        assert r.status_code == 200, r.text
        r = httpx.post(url + C + "/points/count", json={}, headers=headers)
        assert r.status_code == 200 and r.json()["result"]["count"] == before["old"][0]
    # Admin routes take the admin key alone, in either header.
    for headers in (ADMIN, {"Authorization": f"Bearer {ADMIN_KEY}"}):
        assert httpx.get(url + "/admin/routing", headers=headers).status_code == 200
    for headers, status in (({}, 401), (RO, 403), (RW, 403)):
        assert httpx.get(url + "/admin/routing", headers=headers).status_code == status
    # A read-write key writes (Bearer or api-key), and so does the admin key; a bodiless
    # DELETE needs no Content-Type. The checksums see each change.
    doc = {"documents": [{"id": "gate/a b", "text": "A passage with a slash in its id."}]}
    assert httpx.put(url + "/documents", json=doc, headers=RW).status_code == 200
    after = checksum(rt)
    assert after["old"][0] == before["old"][0] + 1 and after["new"] != before["new"]
    r = httpx.delete(url + "/documents/gate%2Fa%20b", headers={"api-key": RW_KEY})
    assert r.status_code == 200 and r.json()["existed"] == {"old": 1, "new": 1}, r.text
    point = {"points": [{"id": "gate-q", "vector": DOC}]}
    assert httpx.put(url + C + "/points", json=point, headers=ADMIN).status_code == 200
    r = httpx.post(url + C + "/points/delete", json={"points": ["gate-q"]}, headers=RW)
    assert r.status_code == 200
    assert checksum(rt) == before
    # JSON with a charset is JSON.
    r = httpx.post(
        url + "/search",
        content=b'{"query": "with statement", "k": 1}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


def test_reads_can_need_a_key(tmp_path: Any, models: dict) -> None:
    """reads_require_key: true (the default off loopback): reads take any key, and no key or
    an unknown one is a 401; health, Qdrant's version call and Chroma's heartbeat and version
    stay open."""
    settings = demo_settings(
        tmp_path,
        migration={"lazy": False, "backfill": False},
        server={"read_only_api_keys": [RO_KEY], "reads_require_key": True},
    )
    with Runtime(settings, dict(models)) as rt:
        ingest(rt, "old", python_reference()[:6], progress=False)
        start_migration(rt, progress=False)
        with LiveServer(create_app(rt)) as srv:
            for path in ("/healthz", "/readyz", "/", "/api/v2/heartbeat", "/api/v2/version"):
                assert httpx.get(srv.url + path).status_code == 200, path
            reads = [
                ("POST", "/search", {"query": "for loop"}),
                ("POST", C + "/points/scroll", {}),
                ("POST", C + "/points", {"ids": ["x"]}),
                ("POST", CC + "/get", {"limit": 2}),
                ("GET", CC + "/count", None),
                ("GET", "/migration", None),
                ("GET", "/metrics", None),
            ]
            for method, path, body in reads:
                for headers, status in (({}, 401), ({"api-key": "nope-nope"}, 401)):
                    r = httpx.request(method, srv.url + path, json=body, headers=headers)
                    assert r.status_code == status, (path, r.text)
                    assert_shape(path, r)
                for headers in (RO, {"api-key": RW_KEY}):
                    r = httpx.request(method, srv.url + path, json=body, headers=headers)
                    assert r.status_code == 200, (path, r.text)
            anonymous = QdrantClient(url=srv.url, cloud_inference=True, timeout=60)
            with pytest.raises(UnexpectedResponse) as refused:
                anonymous.count("crossfade")
            assert refused.value.status_code == 401


def test_an_unmodified_qdrant_client_with_a_read_only_key(live: tuple[str, Runtime]) -> None:
    url, rt = live
    before = checksum(rt)
    with warnings.catch_warnings():  # "Api key is used with an insecure connection": loopback
        warnings.simplefilter("ignore")
        client = QdrantClient(url=url, api_key=RO_KEY, cloud_inference=True, timeout=60)
    found = client.query_points(
        "crossfade", query=qm.Document(text="iterate over a list", model="any"), limit=3
    ).points
    assert len(found) == 3 and all(p.payload for p in found)
    assert client.count("crossfade").count == before["old"][0]
    records, _ = client.scroll("crossfade", limit=2)
    assert len(records) == 2
    assert client.retrieve("crossfade", [records[0].id])[0].id == records[0].id
    point = qm.PointStruct(id="gate-q", vector=qm.Document(text="loops", model="any"))
    with pytest.raises(UnexpectedResponse) as refused:
        client.upsert("crossfade", [point])
    assert refused.value.status_code == 403
    assert "read-only" in refused.value.structured()["status"]["error"]
    for selector in (qm.PointIdsList(points=[records[0].id]), qm.Filter()):
        with pytest.raises(UnexpectedResponse) as refused:
            client.delete("crossfade", points_selector=selector)
        assert refused.value.status_code == 403
    assert checksum(rt) == before
    client.close()
