"""Chroma's HTTP API on the proxy, driven by an unmodified `chromadb.HttpClient` (real HTTP to
uvicorn on 127.0.0.1, real models, the embedded engine; one run with the old index a real Chroma
server). Two apps: one whose collection embeds through crossfade's /v1/embeddings (chromadb's
OpenAIEmbeddingFunction naming the old model: its query vectors come back as their text,
`text`), one that embeds locally with the old model (its vectors take the vector path,
`vector-old` here: no query map at this coverage). Shown: the service calls, count, get (ids,
where, limit/offset, embeddings), query with where (distances in the app's own space), add /
upsert / update / delete in both indexes with the right model's vectors, refusals in Chroma's
shape (chromadb raises its own exceptions) that change nothing, a read-only key refused on
writes, and random bad bodies and filters refused in Chroma's shape, changing nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.errors import (
    ChromaAuthError,
    ChromaError,
    InvalidArgumentError,
    NotFoundError,
    error_types,
)
from chromadb.utils.embedding_functions import OpenAIEmbeddingFunction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.chroma_api import ChromaRefusal
from proxy.chroma_api.bodies import RecordsBody
from proxy.chroma_api.collection import ServedCollection
from proxy.chroma_api.records import Stored, plan
from proxy.chroma_api.where import to_filter
from proxy.demo import python_reference
from proxy.document import Doc
from proxy.filters import Condition, FilterTree, HasId
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.model import Embedder
from proxy.runtime import Runtime
from tests.helpers import RW_KEY, LiveServer, chroma_client, demo_settings

RO_KEY = "chroma-read-only-key-0123456789"
# chromadb's OpenAI embedding function warns that a key given directly is not persisted.
pytestmark = pytest.mark.filterwarnings("ignore:Direct api_key configuration:DeprecationWarning")
OLD_MODEL = "paraphrase-MiniLM-L3-v2"
N = 40
NAME = "crossfade"  # the demo's old index's collection: what the apps name


class OldModel(EmbeddingFunction[Documents]):
    """An app's own embedding function: the old model, run locally."""

    def __init__(self, model: Embedder) -> None:
        self.model = model

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.model.embed_documents(list(input)))

    @staticmethod
    def name() -> str:
        return "app-old-model"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OldModel:
        raise NotImplementedError("built in the test, from the session's model")


class App:
    """A chromadb HttpClient app on the proxy, recording each answer's X-Crossfade-Query."""

    def __init__(
        self, url: str, key: str | None, ef: Any, header: str = "X-Chroma-Token", name: str = NAME
    ) -> None:
        self.client = chroma_client(url, key, header)
        self.paths: list[str] = []
        session = self.client._server._session  # type: ignore[attr-defined]
        session.event_hooks["response"].append(self._record)
        self.col = self.client.get_collection(name, embedding_function=ef)

    def _record(self, response: httpx.Response) -> None:
        path = response.headers.get("x-crossfade-query")
        if path:
            self.paths.append(path)


def corpus() -> list[Doc]:
    docs = python_reference()[:N]
    return [Doc(d.doc_id, d.text, {**d.metadata, "n": i}) for i, d in enumerate(docs)]


def snapshot(rt: Runtime) -> dict[str, Any]:
    """Both indexes, whole: what a refused request must leave alone."""
    out: dict[str, Any] = {}
    for side in ("old", "new"):
        store = rt.store(side)
        points = sorted((p for b in store.scroll() for p in b), key=lambda p: p["doc_id"])
        vecs = store.dense_vectors([p["doc_id"] for p in points])
        blob = orjson.dumps(
            [points, {k: v.tolist() for k, v in sorted(vecs.items())}],
            option=orjson.OPT_SORT_KEYS,
        )
        out[side] = (store.count(), len(vecs), hashlib.sha256(blob).hexdigest())
    out["journal"] = len(rt.journal.pending())
    return out


def deploy(settings: Any, models: dict[str, Embedder], n: int = N) -> Runtime:
    rt = Runtime(settings, dict(models))
    docs = corpus()[:n]
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)
    ingest(rt, "new", docs[::3], progress=False)  # a third migrated
    rt.state.set("paused", True)  # the indexes change only by the writes sent here
    return rt


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[tuple[str, Runtime]]:
    settings = demo_settings(
        tmp_path_factory.mktemp("chroma-api"),
        migration={"lazy": False, "backfill": False},
        server={"read_only_api_keys": [RO_KEY]},
    )
    rt = deploy(settings, models)
    with LiveServer(create_app(rt)) as srv:
        yield srv.url, rt
    rt.close()


def url_of(url: str, rt: Runtime, path: str = "") -> str:
    c = ServedCollection.of(rt.settings, 384)
    return f"{url}/api/v2/tenants/{c.tenant}/databases/{c.database}/collections/{c.id}{path}"


def in_both(rt: Runtime, doc_id: str) -> dict[str, Any]:
    """The document as each index holds it, and its vector there."""
    out = {}
    for side in ("old", "new"):
        store = rt.store(side)
        view = store.retrieve([doc_id], ("text", "metadata")).get(doc_id)
        vec = store.dense_vectors([doc_id]).get(doc_id)
        out[side] = (view and view["text"], view and view["metadata"], vec)
    return out


def unit(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_service_calls_and_reads(live: tuple[str, Runtime], models: dict) -> None:
    url, rt = live
    app = App(url, RW_KEY, OldModel(models["old"]))
    client, col = app.client, app.col
    assert client.heartbeat() > 0
    assert client.get_version() == "1.0.0"
    assert [c.name for c in client.list_collections()] == [NAME]
    assert client.count_collections() == 1
    # get_or_create of the served collection answers it; another is refused.
    assert (
        client.get_or_create_collection(NAME, embedding_function=OldModel(models["old"])).id
        == col.id
    )
    with pytest.raises(InvalidArgumentError, match="one collection"):
        client.create_collection("another-one")
    with pytest.raises(NotFoundError):
        client.get_collection("nope-nope")
    assert col.count() == N
    # get: limit/offset in the index's order; where; ids (with where); embeddings = old's.
    first = col.get(limit=10, include=[])["ids"]
    page = col.get(limit=4, offset=3, include=["documents", "metadatas"])
    assert page["ids"] == first[3:7]
    views = rt.store("old").retrieve(page["ids"], ("text", "metadata"))
    assert page["documents"] == [views[i]["text"] for i in page["ids"]]
    assert page["metadatas"] == [views[i]["metadata"] for i in page["ids"]]
    topic = corpus()[0].metadata["topic"]
    want = {d.doc_id for d in corpus() if d.metadata["topic"] == topic}
    assert set(col.get(where={"topic": topic})["ids"]) == want
    got = col.get(where={"$and": [{"topic": {"$ne": topic}}, {"n": {"$lt": 10}}]}, include=[])
    assert set(got["ids"]) == {d.doc_id for d in corpus()[:10] if d.metadata["topic"] != topic}
    ids = [corpus()[5].doc_id, corpus()[1].doc_id, "missing"]
    got = col.get(ids=ids, include=["embeddings"])
    assert got["ids"] == ids[:2]
    vecs = rt.store("old").dense_vectors(ids[:2])
    assert np.allclose(got["embeddings"], [vecs[i] for i in ids[:2]])
    assert col.get(ids=ids, where={"n": {"$in": [5, 7]}}, include=[])["ids"] == ids[:1]
    assert set(col.peek(3)["ids"]) <= {d.doc_id for d in corpus()}


def test_queries_text_path_and_vector_path(live: tuple[str, Runtime], models: dict) -> None:
    url, rt = live
    via_proxy = OpenAIEmbeddingFunction(api_key=RW_KEY, api_base=url + "/v1", model_name=OLD_MODEL)
    local = OldModel(models["old"])
    topics = sorted({d.metadata["topic"] for d in corpus()})[:3]
    allowed = {d.doc_id for d in corpus() if d.metadata["topic"] in topics}
    # Other texts for the local app: the old model's vector of a text crossfade embedded for
    # /v1/embeddings is bit for bit the one it returned, so it would be known as its text.
    for ef, path, texts in (
        (via_proxy, "text", ["how does an assert statement work", "what is a for loop"]),
        (local, "vector-old", ["when is an assertion checked", "looping over a sequence"]),
    ):
        app = App(url, RW_KEY, ef)
        found = app.col.query(query_texts=texts, n_results=4, where={"topic": {"$in": topics}})
        assert app.paths[-1] == path, app.paths
        assert [len(ids) for ids in found["ids"]] == [4, 4]
        assert {i for ids in found["ids"] for i in ids} <= allowed
        # Each distance is the app's own (cosine) distance, whichever path ranked the hits.
        q = unit(models["old"].embed_queries(texts[:1])[0])
        vecs = rt.store("old").dense_vectors(found["ids"][0])
        expect = [1 - float(q @ unit(vecs[i])) for i in found["ids"][0]]
        assert np.allclose(found["distances"][0], expect, atol=1e-4)
        assert (
            found["documents"][0][0]
            == rt.store("old").retrieve([found["ids"][0][0]])[found["ids"][0][0]]["text"]
        )
    # The vector path (unfused) ranks by the app's distance itself.
    assert found["distances"][0] == sorted(found["distances"][0])


def test_writes_reach_both_indexes_with_the_right_models(
    live: tuple[str, Runtime], models: dict
) -> None:
    url, rt = live
    via_proxy = OpenAIEmbeddingFunction(api_key=RW_KEY, api_base=url + "/v1", model_name=OLD_MODEL)
    before = rt.store("old").count(), rt.store("new").count()
    for ef, prefix in ((via_proxy, "cw-a"), (OldModel(models["old"]), "cw-b")):
        app = App(url, RW_KEY, ef, header="Authorization")
        col = app.col
        text = f"{prefix}: a for loop walks over the items of a list"
        col.add(ids=[prefix], documents=[text], metadatas=[{"topic": "loops", "n": 1}])
        old_text, old_meta, old_vec = in_both(rt, prefix)["old"]
        new_text, new_meta, new_vec = in_both(rt, prefix)["new"]
        assert old_text == new_text == text and old_meta == new_meta == {"topic": "loops", "n": 1}
        assert float(unit(old_vec) @ unit(models["old"].embed_documents([text])[0])) > 0.999
        assert float(unit(new_vec) @ unit(models["new"].embed_documents([text])[0])) > 0.999
        # add of an existing id leaves it as it is (Chroma's add)
        col.add(ids=[prefix], documents=["something else entirely"])
        assert in_both(rt, prefix)["old"][0] == text
        # update of metadata only keeps the document; a null removes a key
        col.update(ids=[prefix], metadatas=[{"n": 2, "topic": None}])
        for side in ("old", "new"):
            assert in_both(rt, prefix)[side][:2] == (text, {"n": 2})
        assert col.get(ids=[prefix])["documents"] == [text]
        # upsert: a new text, metadata merged; both models re-embed it
        text2 = f"{prefix}: the with statement manages a context"
        col.upsert(ids=[prefix], documents=[text2], metadatas=[{"kind": "stmt"}])
        now = in_both(rt, prefix)
        assert now["old"][:2] == now["new"][:2] == (text2, {"n": 2, "kind": "stmt"})
        assert float(unit(now["new"][2]) @ unit(models["new"].embed_documents([text2])[0])) > 0.999
        assert prefix in col.get(where={"kind": "stmt"})["ids"]
    # array metadata: $contains / $not_contains; $or; a float compared as a number
    col.update(ids=["cw-a"], metadatas=[{"tags": ["loops", "lists"], "w": 0.5}])
    assert col.get(where={"tags": {"$contains": "lists"}}, include=[])["ids"] == ["cw-a"]
    assert "cw-a" not in col.get(where={"tags": {"$not_contains": "lists"}}, include=[])["ids"]
    got = col.get(where={"$or": [{"w": {"$eq": 0.5}}, {"n": {"$gte": 39}}]}, include=[])["ids"]
    assert sorted(got) == sorted(["cw-a", corpus()[39].doc_id])
    assert rt.store("old").count() == before[0] + 2 and rt.store("new").count() == before[1] + 2
    col.delete(ids=["cw-a"])
    col.delete(where={"kind": "stmt"})
    for doc_id in ("cw-a", "cw-b"):
        assert in_both(rt, doc_id) == {"old": (None, None, None), "new": (None, None, None)}
    assert (rt.store("old").count(), rt.store("new").count()) == before


def test_refusals_are_chroma_shaped_and_change_nothing(
    live: tuple[str, Runtime], models: dict
) -> None:
    url, rt = live
    before = snapshot(rt)
    col = App(url, RW_KEY, OldModel(models["old"])).col
    text = "a passage about generators"
    foreign = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    with pytest.raises(ChromaError, match=OLD_MODEL):  # a vector of no model's: 409
        col.add(ids=["cw-x"], embeddings=[foreign], documents=[text])
    with pytest.raises(InvalidArgumentError, match="documents"):
        col.add(ids=["cw-x"], embeddings=[foreign])
    with pytest.raises(InvalidArgumentError, match="where_document"):
        col.get(where_document={"$contains": "loop"})
    with pytest.raises(InvalidArgumentError, match="where_document"):
        col.delete(where_document={"$contains": "loop"})
    rw = {"X-Chroma-Token": RW_KEY}
    bad = [
        ("/get", {"where": {"topic": {"$regex": "a.*"}}}, "$regex"),
        ("/get", {"where": {"#document": {"$contains": "x"}}}, "#document"),
        ("/get", {"where": {"a.b": 1}}, "a.b"),
        ("/delete", {"where": {"topic": "x", "n": 1}}, "exactly one key"),
        ("/delete", {"where": {"$not": {"n": 1}}}, "$not"),
        ("/query", {"n_results": 2}, "query_embeddings"),
        ("/query", {"query_texts": ["loops"]}, "query_texts"),
        ("/query", {"query_embeddings": [[0.1] * 7]}, "7 dimensions"),
        ("/upsert", {"ids": ["a", "a"], "documents": ["x", "y"]}, "unique"),
        ("/upsert", {"ids": ["a"], "documents": ["x", "y"]}, "Inconsistent"),
        ("/add", {"ids": ["a"], "documents": ["x"], "uris": ["u"]}, "uris"),
    ]
    for path, body, named in bad:
        r = httpx.post(url_of(url, rt, path), json=body, headers=rw)
        assert r.status_code == 400, (path, body, r.text)
        out = r.json()
        assert out["error"] == "InvalidArgumentError" and named in out["message"], out
    r = httpx.post(
        url_of(url, rt, "/get"),
        content=b"{not json",
        headers={**rw, "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"] == "InvalidArgumentError"
    r = httpx.post(url_of(url, rt, "/add"), json={"ids": "a", "documents": ["x"]}, headers=rw)
    assert r.status_code == 422 and r.json()["message"].startswith("Failed to deserialize")
    r = httpx.get(
        url
        + "/api/v2/tenants/default_tenant/databases/default_database/collections/not-a-uuid/count"
    )
    assert r.status_code == 400 and "UUID" in r.json()["message"]
    assert snapshot(rt) == before


def test_keys_read_only_and_none(live: tuple[str, Runtime], models: dict) -> None:
    url, rt = live
    before = snapshot(rt)
    reader = App(url, RO_KEY, OldModel(models["old"]))
    assert reader.col.count() == N
    assert len(reader.col.query(query_texts=["assert"], n_results=2)["ids"][0]) == 2
    with pytest.raises(ChromaAuthError) as refused:
        reader.col.add(ids=["cw-ro"], documents=["read-only keys never write"])
    assert "read-only" in str(refused.value)
    with pytest.raises(ChromaAuthError):
        reader.col.delete(ids=[corpus()[0].doc_id])
    anonymous = App(url, None, OldModel(models["old"]))  # reads are open on loopback
    assert anonymous.col.count() == N
    with pytest.raises(ChromaError) as refused:
        anonymous.col.upsert(ids=["cw-ro"], documents=["no key never writes"])
    assert type(refused.value).name() == "AuthorizationError"
    assert snapshot(rt) == before


# --- property tests: random bad bodies and filters ------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=6)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
ops = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains",
                       "$not_contains", "$regex", "$exists", "$and"])  # fmt: skip
keys = st.sampled_from(["topic", "n", "part", "a.b", "#document", "$or", "", "x y"])
wheres = st.recursive(
    st.dictionaries(keys, scalars | st.dictionaries(ops, json_values, max_size=2), max_size=2),
    lambda inner: st.dictionaries(
        st.sampled_from(["$and", "$or", "$not"]), st.lists(inner, max_size=3), max_size=1
    ),
    max_leaves=5,
)
vectors = st.lists(st.floats(width=32) | scalars, max_size=3) | st.text(max_size=8)
fields = {
    "ids": st.lists(st.text(max_size=4) | scalars, max_size=3) | scalars,
    "where": wheres | json_values,
    "where_document": st.none() | json_values,
    "limit": st.integers(-2, 20_000) | scalars,
    "offset": st.integers(-2, 5) | scalars,
    "include": st.lists(st.sampled_from(["documents", "uris", "data", "embeddings"]), max_size=2),
    "n_results": st.integers(-1, 5000) | scalars,
    "query_embeddings": st.lists(vectors, max_size=2) | scalars,
    "embeddings": st.lists(vectors, max_size=2) | scalars,
    "documents": st.lists(st.text(max_size=5) | scalars, max_size=2) | scalars,
    "metadatas": st.lists(st.dictionaries(keys, json_values, max_size=2) | scalars, max_size=2),
    "uris": scalars,
}
bodies = st.fixed_dictionaries({}, optional=fields) | json_values
ROUTES = ["/get", "/query", "/add", "/upsert", "/update", "/delete"]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[tuple[str, Runtime]]:
    """A deployment of its own: the valid writes among the random bodies change it."""
    settings = demo_settings(
        tmp_path_factory.mktemp("chroma-fuzz"), migration={"lazy": False, "backfill": False}
    )
    rt = deploy(settings, models, n=12)
    with LiveServer(create_app(rt)) as srv:
        yield srv.url, rt
    rt.close()


@settings(deadline=None, database=None, max_examples=80, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_bad_bodies_are_refused_in_chromas_shape_and_change_nothing(
    fuzzed: tuple[str, Runtime], route: str, body: Any
) -> None:
    """Whatever the body, a documented answer (never a 500); every error Chroma-shaped with a
    name chromadb knows; and a request refused changes nothing in either index."""
    url, rt = fuzzed
    before = snapshot(rt)
    r = httpx.post(
        url_of(url, rt, route),
        content=json.dumps(body, allow_nan=True).encode(),
        headers={"X-Chroma-Token": RW_KEY, "content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code in (200, 201, 400, 409, 422), (route, body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        out = r.json()
        assert set(out) == {"error", "message"} and out["error"] in error_types, out
        assert snapshot(rt) == before


# --- the old index a real Chroma server -----------------------------------------------------


def test_old_index_on_a_chroma_server(tmp_path: Path, models: dict, chroma_server: Any) -> None:
    name = "app-docs"
    settings = demo_settings(
        tmp_path,
        migration={"lazy": False, "backfill": False},
        indexes={
            "old": {"backend": "chroma", "url": chroma_server.url, "collection": name},
            "new": {"backend": "edge", "path": "new"},
        },
    )
    rt = deploy(settings, models)
    try:
        with LiveServer(create_app(rt)) as srv:
            app = App(srv.url, RW_KEY, OldModel(models["old"]), name=name)
            col = app.col
            assert col.name == name and col.count() == N
            topic = corpus()[0].metadata["topic"]
            want = {d.doc_id for d in corpus() if d.metadata["topic"] == topic}
            assert set(col.get(where={"topic": topic}, include=[])["ids"]) == want
            found = col.query(query_texts=["assert statement"], n_results=3, where={"topic": topic})
            assert set(found["ids"][0]) <= want and app.paths[-1] == "vector-old"
            col.add(ids=["cw-c"], documents=["a note on chroma"], metadatas=[{"topic": "c"}])
            assert in_both(rt, "cw-c")["old"][:2] == in_both(rt, "cw-c")["new"][:2]
            col.delete(where={"topic": "c"})
            assert col.count() == N and rt.store("new").count() == N
    finally:
        rt.close()


# --- the pure translation -------------------------------------------------------------------


def cond(key: str, **body: Any) -> Condition:
    return Condition.model_validate({"key": key, **body})


@pytest.mark.parametrize(
    ("where", "clause"),
    [
        ({"a": "x"}, cond("a", match={"value": "x"})),
        ({"a": {"$ne": 3}}, FilterTree(must_not=(cond("a", match={"value": 3}),))),
        ({"a": {"$gte": 2}}, cond("a", range={"gte": 2})),
        ({"a": {"$eq": 0.5}}, cond("a", range={"gte": 0.5, "lte": 0.5})),
        ({"a": {"$in": ["x", "y"]}}, cond("a", match={"any": ["x", "y"]})),
        ({"a": {"$nin": [1]}}, FilterTree(must_not=(cond("a", match={"any": [1]}),))),
        ({"a": {"$contains": "x"}}, cond("a", match={"value": "x"})),
        (
            {"$or": [{"a": 1}, {"b": True}]},
            FilterTree(should=(cond("a", match={"value": 1}), cond("b", match={"value": True}))),
        ),
    ],
)
def test_where_maps_to_crossfades_filter(where: Any, clause: Any) -> None:
    assert to_filter(where) == FilterTree(must=(clause,))
    assert to_filter(where, ["x", "x"]) == FilterTree(must=(HasId(("x",)), clause))


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ({"a": {"$regex": "x"}}, "$regex"),
        ({"$not": {"a": 1}}, "$not"),
        ({"#document": {"$contains": "x"}}, "#document"),
        ({"a.b": 1}, "a.b"),
        ({"a": 1, "b": 2}, "exactly one key"),
        ({"a": {"$gt": "x"}}, "compares numbers"),
        ({"a": {"$in": [1, "x"]}}, "one type"),
        ({"a": None}, "None"),
        ({"a": 2**70}, "a"),
        ({"$and": []}, "non-empty"),
    ],
)
def test_where_refused_naming_what(where: Any, named: str) -> None:
    with pytest.raises(ChromaRefusal, match="Invalid where clause") as refused:
        to_filter(where)
    assert named in str(refused.value)


def test_records_keep_chromas_add_upsert_update_meanings() -> None:
    stored = {"a": Stored("old text", {"k": 1, "t": "x"})}
    body = RecordsBody(ids=["a", "b"], documents=["new a", "new b"], metadatas=[{"k": 2}, None])
    assert [d.doc_id for d in plan("add", body, stored).docs] == ["b"]  # a exists: left alone
    up = {d.doc_id: d for d in plan("upsert", body, stored).docs}
    assert (up["a"].text, up["a"].metadata) == ("new a", {"k": 2, "t": "x"})  # merged
    assert (up["b"].text, up["b"].metadata) == ("new b", {})
    meta_only = RecordsBody(ids=["a", "b"], metadatas=[{"t": None, "u": 3}, {"u": 4}])
    (a,) = plan("update", meta_only, stored).docs  # b does not exist: ignored
    assert (a.text, a.metadata) == ("old text", {"k": 1, "u": 3})  # the document kept
    with pytest.raises(ChromaRefusal, match="documents"):
        plan("upsert", RecordsBody(ids=["a"], embeddings=[[0.1, 0.2]]), stored)
