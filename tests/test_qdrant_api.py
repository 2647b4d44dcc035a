"""Qdrant's REST API on the proxy, driven by a real qdrant-client over real HTTP: an app
written against qdrant-client alone (tests/qdrant_app.py) runs unchanged against crossfade
during a fused migration of its LangChain-layout collection (adopted, migrated --into a new
collection), and against qdrant-client's local mode holding the same collection; raw-vector
queries get the configured behaviour; unsupported filters get Qdrant-shaped 400s."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from proxy.app import create_app
from proxy.document import Doc
from proxy.migration.start import start_migration
from proxy.migration.worker import Reembedder
from proxy.model import Embedder
from proxy.runtime import Runtime
from tests.helpers import RW_KEY, LiveServer
from tests.qdrant_app import AppRun, run_app
from tests.test_adopt import questions, settings_for, swapped

pytestmark = pytest.mark.slow
N = 120
L6 = "sentence-transformers/all-MiniLM-L6-v2"  # what the app names in its Documents
TOPIC = "comparisons"  # 9 passages: every one is in a filtered top-10


def corpus() -> list[Doc]:
    from proxy.demo import python_reference

    docs = [d for d in python_reference() if d.metadata["topic"] != "specialnames"]
    return docs[:N]


def write_collection(path: Path, docs: list[Doc], vecs: Any) -> list[str]:
    """The app's collection as LangChain writes it (UUID ids, unnamed vector)."""
    client = QdrantClient(path=str(path))
    client.create_collection(
        "docs", vectors_config=qm.VectorParams(size=384, distance=qm.Distance.COSINE)
    )
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, d.doc_id)) for d in docs]
    client.upsert(
        "docs",
        [
            qm.PointStruct(
                id=i, vector=v.tolist(), payload={"page_content": d.text, "metadata": d.metadata}
            )
            for i, v, d in zip(ids, vecs, docs, strict=True)
        ],
    )
    client.close()
    return ids


def queries(docs: list[Doc]) -> list[str]:
    """50 queries: the demo's questions, then the first line of some passages."""
    qs = questions(20) + [d.text.splitlines()[0] for d in docs[::2]]
    return list(dict.fromkeys(qs))[:50]


class Setup:
    def __init__(self, tmp: Path, models_: dict[str, Embedder]) -> None:
        self.docs = corpus()
        self.l6 = models_["new"]  # the app's model: the old one of this migration
        vecs = self.l6.embed_documents([d.text for d in self.docs])  # once for both copies
        self.ids = write_collection(tmp / "proxied", self.docs, vecs)
        write_collection(tmp / "local", self.docs, vecs)
        self.local_path = tmp / "local"
        url = f"local:{tmp / 'proxied'}"
        self.settings = settings_for(
            tmp,
            {"backend": "qdrant", "url": url, "collection": "docs", "vector": "", "adopt": {}},
            {"backend": "qdrant", "url": url, "collection": "docs_l3"},
        )
        self.models = swapped(models_)
        self.rt = Runtime(self.settings, self.models)
        start_migration(self.rt, progress=False, into="docs_l3")
        worker = Reembedder(self.rt)
        worker.refill()
        for _ in range(2):  # part of the corpus migrated: fused answers mix both models
            worker.step()
        self.rt.state.set("paused", True)  # nothing changes under the comparisons
        self.queries = queries(self.docs)
        self.fetch = [self.ids[i] for i in (0, 5, 17)]
        self.new_point = (
            str(uuid.uuid5(uuid.NAMESPACE_URL, "app-upsert")),
            "The with statement wraps a block in a context manager's enter and exit methods.",
            {"page_content": "The with statement wraps a block in a context manager's enter "
             "and exit methods.", "metadata": {"topic": "with", "part": 9}},
        )  # fmt: skip
        self.delete_id = self.ids[40]

    def run(self, client: QdrantClient, embed: Any) -> AppRun:
        return run_app(
            client, "docs", embed, self.queries, TOPIC, self.fetch, self.new_point, self.delete_id
        )

    def vector(self, text: str) -> list[float]:
        return self.l6.embed_queries([text])[0].tolist()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Embedder]) -> Iterator[Any]:
    s = Setup(tmp_path_factory.mktemp("qdrant_api"), models)
    with LiveServer(create_app(s.rt)) as srv:
        s.url = srv.url  # type: ignore[attr-defined]
        client = QdrantClient(url=srv.url, api_key=RW_KEY, cloud_inference=True, timeout=120)
        # /search's answers before the app writes anything
        s.search_top10 = [  # type: ignore[attr-defined]
            [h["doc_id"] for h in search(srv.url, q)["results"]] for q in s.queries
        ]
        s.filtered_search = search(  # type: ignore[attr-defined]
            srv.url, s.queries[0], {"must": [{"key": "topic", "match": {"value": TOPIC}}]}
        )
        s.proxied = s.run(client, lambda t: qm.Document(text=t, model=L6))  # type: ignore[attr-defined]
        s.client = client  # type: ignore[attr-defined]
        # The same app, queries embedded locally, on local mode holding the same collection
        # (both collections then hold the same points for the tests below).
        local = QdrantClient(path=str(s.local_path))
        try:
            s.local = s.run(local, s.vector)  # type: ignore[attr-defined]
        finally:
            local.close()
        yield s
        client.close()
    s.rt.close()


def search(url: str, q: str, flt: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": q, "k": 10, "reembed": False}
    if flt:
        body["filter"] = flt
    r = httpx.post(url + "/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_app_runs_unchanged_against_crossfade_during_fused_migration(setup: Any) -> None:
    run: AppRun = setup.proxied
    cov = httpx.get(setup.url + "/migration", timeout=30).json()["indexes"]["new"]["coverage"]
    assert 0 < cov < 1  # fused answers over a partly migrated corpus
    # The app's top-10 for 50 queries is crossfade's /search's, id for id.
    assert len(run.top10) == 50 and all(len(t) == 10 for t in run.top10)
    assert run.top10 == setup.search_top10
    # Its filtered query: /search's with the same condition; every hit has the topic.
    assert [str(p.id) for p in run.filtered] == [
        h["doc_id"] for h in setup.filtered_search["results"]
    ]
    by_id = dict(zip(setup.ids, setup.docs, strict=True))
    in_topic = {i for i, d in by_id.items() if d.metadata["topic"] == TOPIC}
    assert {str(p.id) for p in run.filtered} == in_topic
    for p in run.filtered:  # the app's own payload layout
        d = by_id[str(p.id)]
        assert p.payload == {"page_content": d.text, "metadata": d.metadata}
    assert [len(b.points) for b in run.batch] == [3, 3, 3]
    for q, b in zip(setup.queries[:3], run.batch, strict=True):
        flt = {"must": [{"key": "topic", "match": {"value": TOPIC}}]}
        assert [str(p.id) for p in b.points] == [
            h["doc_id"] for h in search(setup.url, q, flt)["results"]
        ][:3]
    assert {str(r.id) for r in run.scrolled} == in_topic
    assert run.pages == math.ceil(len(in_topic) / 2)  # pages of 2
    assert run.counted == len(in_topic) and run.counted_all == N
    assert [str(r.id) for r in run.fetched] == setup.fetch
    assert run.fetched[0].payload == {
        "page_content": by_id[setup.fetch[0]].text,
        "metadata": by_id[setup.fetch[0]].metadata,
    }
    # The upsert made through the app is in both indexes, in the app's layout in its own.
    pid, text, payload = setup.new_point
    assert [r.payload for r in run.after_upsert] == [payload]
    for side in ("old", "new"):
        got = setup.rt.store(side).retrieve([pid], ["text", "metadata"])
        assert got[pid]["text"] == text and got[pid]["metadata"] == payload["metadata"], side
        assert setup.rt.store(side).retrieve([setup.delete_id], []) == {}, side
    assert run.after_delete == [] and run.counted_after == N


def test_hybrid_prefetch_of_documents_is_crossfade_fusion(setup: Any) -> None:
    q = setup.queries[3]
    doc = qm.Document(text=q, model=L6)
    res = setup.client.query_points(
        "docs",
        prefetch=[
            qm.Prefetch(query=doc, using="dense", limit=20),
            qm.Prefetch(query=doc, using="sparse", limit=20),
        ],
        query=qm.FusionQuery(fusion=qm.Fusion.RRF),
        limit=10,
    )
    assert [str(p.id) for p in res.points] == [h["doc_id"] for h in search(setup.url, q)["results"]]
    # offset and score_threshold as Qdrant applies them: after ranking
    page = setup.client.query_points("docs", query=doc, limit=5, offset=5).points
    assert [str(p.id) for p in page] == [str(p.id) for p in res.points][5:]
    cut = res.points[4].score
    kept = setup.client.query_points("docs", query=doc, limit=10, score_threshold=cut).points
    assert [p.id for p in kept] == [p.id for p in res.points if p.score >= cut]


def test_migration_headers_and_qdrant_shapes_on_the_wire(setup: Any) -> None:
    body = {"query": {"nearest": {"text": "for loop", "model": L6}}, "limit": 3}
    r = httpx.post(setup.url + "/collections/docs/points/query", json=body, timeout=60)
    assert r.status_code == 200
    assert r.headers["X-Crossfade-Mode"] == "fused"
    assert float(r.headers["X-Crossfade-Coverage"]) > 0
    out = r.json()
    assert out["status"] == "ok" and isinstance(out["time"], float)
    assert set(out["result"]["points"][0]) == {"id", "version", "score", "payload"}
    missing = httpx.post(setup.url + "/collections/nope/points/query", json=body, timeout=60)
    assert missing.status_code == 404
    assert missing.json()["status"]["error"] == "Not found: Collection `nope` doesn't exist!"
    assert setup.client.collection_exists("docs") and not setup.client.collection_exists("x")
    info = setup.client.get_collection("docs")
    assert info.points_count == N and info.config.params.vectors.size == 384


def test_same_app_against_qdrant_local_mode(setup: Any) -> None:
    """The app with its queries embedded locally against local mode holding its
    collection: the same shapes, ids and payloads (rankings differ where crossfade fuses)."""
    theirs: AppRun = setup.local
    ours: AppRun = setup.proxied

    def shape(p: Any) -> tuple[Any, ...]:
        return (type(p).__name__, type(p.id).__name__, sorted(p.payload or {}), p.vector)

    assert [shape(p) for p in ours.filtered] == [shape(p) for p in theirs.filtered]
    # the topic's 9 passages fit a top-10: the same ids whatever the ranking
    assert {p.id for p in ours.filtered} == {p.id for p in theirs.filtered}
    assert [{p.id for p in b.points} <= {p.id for p in ours.filtered} for b in ours.batch] == [
        {p.id for p in b.points} <= {p.id for p in theirs.filtered} for b in theirs.batch
    ]
    assert [len(b.points) for b in ours.batch] == [len(b.points) for b in theirs.batch]
    for name in ("scrolled", "fetched", "after_upsert", "after_delete"):
        mine, other = getattr(ours, name), getattr(theirs, name)
        assert [(r.id, r.payload, r.vector) for r in mine] == [
            (r.id, r.payload, r.vector) for r in other
        ], name
    assert (ours.pages, ours.counted, ours.counted_all, ours.counted_after) == (
        theirs.pages, theirs.counted, theirs.counted_all, theirs.counted_after
    )  # fmt: skip
    # both top-10s name the app's own point ids
    known = set(setup.ids)
    assert all(set(t) <= known for t in ours.top10 + theirs.top10)


def test_raw_vector_refused_when_configured_with_a_qdrant_shaped_400(setup: Any) -> None:
    """raw_vectors: refuse (the default, `serve`, is tests/test_vector_clients.py's)."""
    cfg = setup.settings.model_copy(
        update={
            "qdrant_api": setup.settings.qdrant_api.model_copy(update={"raw_vectors": "refuse"})
        }
    )
    rt = Runtime(cfg, setup.models)
    vec = setup.vector(setup.queries[0])
    try:
        with LiveServer(create_app(rt)) as srv:
            client = QdrantClient(url=srv.url, api_key=RW_KEY, timeout=120)
            with pytest.raises(UnexpectedResponse) as e:
                client.query_points("docs", query=vec, limit=5)
            assert e.value.status_code == 400 and "Document" in str(e.value.content)
            client.close()
            r = httpx.post(
                srv.url + "/collections/docs/points/query", json={"query": vec}, timeout=60
            )
            assert set(r.json()) == {"status", "time"}
            assert "raw vector" in r.json()["status"]["error"]
    finally:
        rt.close()


def test_raw_vector_passed_to_the_index_whose_model_made_it(setup: Any) -> None:
    """raw_vectors: pass. The app's vector (its own model, unnamed) searches its own
    collection, unfused: the answer local mode gives; a vector that fits no index is
    refused, never searched in another model's space."""
    cfg = setup.settings.model_copy(
        update={"qdrant_api": setup.settings.qdrant_api.model_copy(update={"raw_vectors": "pass"})}
    )
    rt = Runtime(cfg, setup.models)
    local = QdrantClient(path=str(setup.local_path))
    try:
        with LiveServer(create_app(rt)) as srv:
            client = QdrantClient(url=srv.url, api_key=RW_KEY, cloud_inference=True, timeout=120)
            for q in setup.queries[:5]:
                vec = setup.vector(q)
                ours = client.query_points("docs", query=vec, limit=10).points
                theirs = local.query_points("docs", query=vec, limit=10).points

                # the same points and scores (points of equal score may come in either order)
                def ranked(points: list[qm.ScoredPoint]) -> list[tuple[float, str]]:
                    return sorted((-round(p.score, 4), str(p.id)) for p in points)

                assert ranked(ours) == ranked(theirs)
            r = httpx.post(
                srv.url + "/collections/docs/points/query", json={"query": vec}, timeout=60
            )
            assert r.headers["X-Crossfade-Raw-Vector"] == "old"
            for bad, using in (([0.1] * 100, None), (vec, "other")):
                with pytest.raises(UnexpectedResponse) as e:
                    client.query_points("docs", query=bad, using=using, limit=3)
                assert e.value.status_code == 400 and "fits no index" in str(e.value.content)
            client.close()
    finally:
        local.close()
        rt.close()


@pytest.mark.parametrize(
    ("condition", "named"),
    [
        (qm.FieldCondition(key="metadata.loc", geo_radius=qm.GeoRadius(
            center=qm.GeoPoint(lon=0, lat=0), radius=1.0)), "geo_radius"),
        (qm.NestedCondition(nested=qm.Nested(key="metadata.items", filter=qm.Filter(
            must=[qm.FieldCondition(key="a", match=qm.MatchValue(value=1))]))), "nested"),
        (qm.FieldCondition(key="metadata.topic", match=qm.MatchText(text="x")),
         "match.text"),
        (qm.HasVectorCondition(has_vector="dense"), "has_vector"),
        (qm.FieldCondition(key="page_content", match=qm.MatchValue(value="x")), "text"),
    ],
)  # fmt: skip
def test_unsupported_filter_refused_by_name(setup: Any, condition: Any, named: str) -> None:
    before = setup.client.count("docs").count
    doc = qm.Document(text="for loop", model=L6)
    with pytest.raises(UnexpectedResponse) as e:
        setup.client.query_points("docs", query=doc, query_filter=qm.Filter(must=[condition]))
    assert e.value.status_code == 400 and named in str(e.value.content)
    with pytest.raises(UnexpectedResponse):
        setup.client.delete("docs", points_selector=qm.Filter(must=[condition]))
    assert setup.client.count("docs").count == before


def test_filter_language(setup: Any) -> None:
    """must / should / must_not nested, match any / except, range, is_empty, has_id: the same
    points as local mode's own filter engine, through count."""
    ids = setup.ids
    flts = [
        qm.Filter(should=[
            qm.FieldCondition(key="metadata.topic", match=qm.MatchAny(any=["calls", "async"])),
            qm.Filter(must=[
                qm.FieldCondition(key="metadata.topic", match=qm.MatchValue(value="compound")),
                qm.FieldCondition(key="metadata.part", range=qm.Range(gte=3, lt=7)),
            ]),
        ]),
        qm.Filter(must_not=[qm.FieldCondition(
            key="metadata.topic", match=qm.MatchExcept(**{"except": ["compound", "calls"]}))]),
        qm.Filter(must=[qm.IsEmptyCondition(is_empty=qm.PayloadField(key="metadata.nope"))],
                      must_not=[qm.HasIdCondition(has_id=ids[:7])]),
        qm.Filter(must=[qm.HasIdCondition(has_id=ids[10:20]),
                            qm.FieldCondition(key="metadata.part", range=qm.Range(gt=0))]),
    ]  # fmt: skip
    local = QdrantClient(path=str(setup.local_path))
    try:
        for f in flts:
            ours = {str(p.id) for p in setup.client.scroll("docs", scroll_filter=f, limit=200)[0]}
            theirs = {str(p.id) for p in local.scroll("docs", scroll_filter=f, limit=200)[0]}
            assert ours == theirs and ours, f
            assert setup.client.count("docs", count_filter=f).count == len(theirs)
    finally:
        local.close()
