"""Apps that send vectors, unmodified, pointed at crossfade by URL only, through a whole
migration of a collection they wrote themselves (qdrant-client's local mode behind crossfade):
LangChain's QdrantVectorStore with a local HuggingFace model (its query vectors take the
query map: `vector-adapted`), the same with OpenAIEmbeddings on crossfade's /v1/embeddings
(its vectors come back as text: `text`), and LlamaIndex's QdrantVectorStore with a local
HuggingFace model. Fused at partial coverage, gated cutover, rollback, cutover, finish; their
searches (with scores, with filters), adds and deletes throughout; every document they add in
both indexes with the right model's vector. Also: a vector that is no model's of the
migration is refused (409) and changes nothing."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from proxy.app import create_app
from proxy.config import resolve_path
from proxy.demo import python_reference, write_eval_set
from proxy.document import Doc
from proxy.migration.start import start_migration
from proxy.model import Embedder
from proxy.runtime import Runtime
from tests.helpers import RW_KEY, LiveServer, wait_for, wait_for_full_coverage
from tests.test_adopt import KEY, L6, NewModel, l6_langchain, swapped
from tests.test_adopt import settings_for as adopt_settings

pytestmark = pytest.mark.slow
N = 454  # the demo corpus, every passage
# Each passage's first 300 characters: the apps' round trip is what is proven, not long texts.
# Embedding is this module's time (every passage by torch for each app's write, by both models
# for the migration); this halves it, and the map's held-out fidelity on the 318 pairs at 70%
# is 0.13 (0.09 on whole passages), as far above `adapter_min_fidelity` (0.05).
CHARS = 300
# Pairs a map is served from: twice the old model's dimension (768) by default, more than 70%
# of this corpus holds; a deployment of a small collection lowers it the same way.
MIN_PAIRS = 256
ADMIN = {"Authorization": f"Bearer {KEY}"}
TOPICS = ("alpha", "beta")


def corpus() -> list[Doc]:
    docs = python_reference()[:N]
    return [Doc(d.doc_id, d.text[:CHARS], {"topic": TOPICS[i % 2]}) for i, d in enumerate(docs)]


def questions() -> list[str]:
    return [
        "how do I catch an exception",
        "what does the with statement do",
        "how are default argument values evaluated",
        "what is a generator expression",
        "how does the import system find modules",
    ]


def settings_for(tmp: Path, url: str, collection: str, adopt: dict[str, Any]) -> Any:
    """test_adopt's deployment (the app's all-MiniLM-L6-v2 old, the demo's L3 new) over the
    app's collection; the backfill stops at 70% (fused at partial coverage) until the test lets
    it go on."""
    return adopt_settings(
        tmp,
        {"backend": "qdrant", "url": url, "collection": collection, "vector": "", "adopt": adopt},
        {"backend": "qdrant", "url": url, "collection": f"{collection}_l3"},
        migration={"until": 70.0},
        vector_clients={"adapter_min_pairs": MIN_PAIRS},
    )


@contextmanager
def client_of(url: str, seen: list[str]) -> Iterator[QdrantClient]:
    """The app's own qdrant-client, pointed at crossfade; `seen` records which query path
    served each search (the X-Crossfade-Query header of crossfade's answers)."""

    def record(response: httpx.Response) -> None:
        if "X-Crossfade-Query" in response.headers:
            seen.append(response.headers["X-Crossfade-Query"])

    client = QdrantClient(url=url, api_key=RW_KEY, timeout=120, event_hooks={"response": [record]})
    try:
        yield client
    finally:
        client.close()


def admin(url: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(url + path, json=body or {}, headers=ADMIN, timeout=600)


def vector_of(client: QdrantClient, collection: str, point: str) -> np.ndarray | None:
    recs = client.retrieve(collection, [point], with_vectors=True)
    if not recs:
        return None
    v = recs[0].vector
    v = v.get("") if isinstance(v, dict) else v
    return None if v is None else np.asarray(v, dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_in_both(
    rt: Runtime, collection: str, point: str, text: str, models: dict[str, Embedder]
) -> None:
    """The point is in the old and the new collection, each with its own model's vector of the
    document's text (as the app's layout gives it: LlamaIndex embeds metadata with it)."""
    client = rt.store("old").client  # type: ignore[attr-defined]
    stored = rt.store("old").retrieve([point], ["text"])[point]["text"]
    assert text in stored
    text = stored
    for coll, side in ((collection, "old"), (f"{collection}_l3", "new")):
        vec = vector_of(client, coll, point)
        assert vec is not None, f"{point} missing from {coll}"
        want = rt.model(side).embed_documents([text])[0]
        assert cosine(vec, want) > 0.999, (coll, cosine(vec, want))


def run_app_migration(
    tmp: Path,
    rt: Runtime,
    collection: str,
    app: Callable[[QdrantClient], Any],
    search: Callable[[Any, str, int, Any], list[tuple[str, float]]],
    add: Callable[[Any, str, str, dict[str, Any]], str],
    delete: Callable[[Any, str], None],
    topic_filter: Callable[[str], Any],
    models: dict[str, Embedder],
    expect: str,
) -> list[str]:
    """The app searches, adds and deletes through crossfade at partial coverage, after the
    cutover, after a rollback, after the cutover again and after finish. Returns the query
    paths seen."""
    docs = corpus()
    write_eval_set(rt.settings.data_path("eval"), docs)
    seen: list[str] = []
    with LiveServer(create_app(rt)) as srv, client_of(srv.url, seen) as client:
        store = app(client)

        def status() -> dict[str, Any]:
            return httpx.get(srv.url + "/migration", timeout=60).json()

        # Fused at partial coverage, once the query map is fitted and passes its fidelity.
        wait_for(lambda: status()["indexes"]["new"]["coverage"] >= 0.65, 300, "70% coverage")
        if expect == "vector-adapted":
            wait_for(lambda: status()["query_map"]["used"], 120, "a usable query map")
        assert status()["indexes"]["new"]["coverage"] < 1.0

        def exercise(stage: str) -> None:
            for q in questions():
                hits = search(store, q, 5, None)
                assert len(hits) == 5 and all(isinstance(s, float) for _, s in hits), stage
            hits = search(store, questions()[0], 5, topic_filter("beta"))
            assert hits, stage
            assert all(meta == "beta" for meta, _ in hits), stage
            text = f"{stage}: an added passage about exception groups and except star"
            point = add(store, text, stage, {"topic": "added"})
            check_in_both(rt, collection, point, text, models)
            got = search(store, text, 3, topic_filter("added"))
            assert got, stage
            delete(store, point)
            client_old = rt.store("old").client  # type: ignore[attr-defined]
            for coll in (collection, f"{collection}_l3"):
                if client_old.collection_exists(coll):
                    assert vector_of(client_old, coll, point) is None, (stage, coll)

        exercise("fused")
        assert seen[-1] == expect, seen[-6:]
        assert admin(srv.url, "/migration/backfill", {"until": 100.0}).status_code == 200
        wait_for_full_coverage(srv.url)
        cut = admin(srv.url, "/admin/cutover")
        assert cut.status_code == 200 and cut.json()["ok"], cut.text
        exercise("cutover")
        assert admin(srv.url, "/admin/rollback").status_code == 200
        exercise("rollback")
        assert admin(srv.url, "/admin/cutover").status_code == 200
        fin = admin(srv.url, "/admin/finish", {"now": True})
        assert fin.status_code == 200, fin.text
        for q in questions():  # after finish, the app's searches still answer
            assert len(search(store, q, 5, None)) == 5
        assert seen[-1] == expect, seen[-6:]
    return seen


def write_langchain(path: Path, docs: list[Doc], embedding: Any) -> None:
    """What a LangChain app writes: UUID ids, the unnamed vector, page_content + metadata."""
    from langchain_core.documents import Document
    from langchain_qdrant import QdrantVectorStore

    client = QdrantClient(path=str(path))
    client.create_collection(
        "docs", vectors_config=qm.VectorParams(size=384, distance=qm.Distance.COSINE)
    )
    store = QdrantVectorStore(client, "docs", embedding=embedding)
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, d.doc_id)) for d in docs]
    store.add_documents([Document(page_content=d.text, metadata=d.metadata) for d in docs], ids=ids)
    client.close()


@pytest.fixture(scope="module")
def langchain_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LangChain app's collection of `corpus()`, written once per module with its model
    (~15 s); each test migrates a copy."""
    path = tmp_path_factory.mktemp("langchain") / "qdrant"
    write_langchain(path, corpus(), l6_langchain())
    return path


def langchain_app(embedding: Any) -> dict[str, Any]:
    from langchain_core.documents import Document
    from langchain_qdrant import QdrantVectorStore

    def add(store: Any, text: str, stage: str, meta: dict[str, Any]) -> str:
        point = str(uuid.uuid5(uuid.NAMESPACE_URL, stage))
        assert store.add_texts([text], metadatas=[meta], ids=[point]) == [point]
        return point

    def search(store: Any, q: str, k: int, flt: Any) -> list[tuple[str, float]]:
        found = store.similarity_search_with_score(q, k=k, filter=flt)
        assert all(isinstance(d, Document) and d.page_content for d, _ in found)
        return [(d.metadata.get("topic"), s) for d, s in found]

    return {
        "app": lambda client: QdrantVectorStore(client, "docs", embedding=embedding),
        "search": search,
        "add": add,
        "delete": lambda store, point: store.delete(ids=[point]),
        "topic_filter": lambda t: qm.Filter(
            must=[qm.FieldCondition(key="metadata.topic", match=qm.MatchValue(value=t))]
        ),
    }


def test_langchain_local_model_through_a_whole_migration(
    tmp_path: Path, models: dict[str, Embedder], langchain_db: Path
) -> None:
    db = tmp_path / "qdrant"
    shutil.copytree(langchain_db, db)
    embedding = l6_langchain()
    rt = Runtime(settings_for(tmp_path, f"local:{db}", "docs", {}), swapped(models))
    try:
        start_migration(rt, progress=False, into="docs_l3")
        seen = run_app_migration(
            tmp_path, rt, "docs", **langchain_app(embedding), models=models,
            expect="vector-adapted",
        )  # fmt: skip
        assert "vector-adapted" in seen and "text" not in seen
    finally:
        rt.close()


def test_a_vector_from_another_model_is_refused_and_changes_nothing(
    tmp_path: Path, models: dict[str, Embedder], langchain_db: Path
) -> None:
    from langchain_qdrant import QdrantVectorStore

    db = tmp_path / "qdrant"
    shutil.copytree(langchain_db, db)
    rt = Runtime(settings_for(tmp_path, f"local:{db}", "docs", {}), swapped(models))
    try:
        start_migration(rt, progress=False, into="docs_l3")
        before = {s: rt.store(s).count() for s in ("old", "new")}
        seen: list[str] = []
        with LiveServer(create_app(rt)) as srv, client_of(srv.url, seen) as client:
            # The same app, but embedding with the new model (L3) into the old model's space.
            app = QdrantVectorStore(client, "docs", embedding=NewModel(models["old"]))
            with pytest.raises(Exception) as refused:
                app.add_texts(["a passage written with the wrong model"], ids=[str(uuid.uuid4())])
            assert "409" in str(refused.value) and "all-MiniLM-L6-v2" in str(refused.value)
            # Without its text, a vector can't be migrated: refused, naming what is missing.
            r = httpx.put(
                srv.url + "/collections/docs/points",
                json={"points": [{"id": str(uuid.uuid4()), "vector": [0.1] * 384,
                                  "payload": {"metadata": {}}}]},
                headers={"api-key": RW_KEY},
                timeout=60,
            )  # fmt: skip
            assert r.status_code == 400 and "page_content" in r.text, r.text
        assert {s: rt.store(s).count() for s in ("old", "new")} == before
    finally:
        rt.close()


def write_llama_index(path: Path, docs: list[Doc], embed_model: Any) -> None:
    """What a LlamaIndex app writes: node ids, the unnamed vector, the node as JSON under
    `_node_content` (its text inside), metadata and doc ids as top-level keys."""
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    client = QdrantClient(path=str(path))
    store = QdrantVectorStore(client=client, collection_name="notes")
    VectorStoreIndex.from_documents(
        [Document(text=d.text, metadata=d.metadata, doc_id=d.doc_id) for d in docs],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )
    client.close()


def llama_index_app(embed_model: Any) -> dict[str, Any]:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    def app(client: QdrantClient) -> Any:
        store = QdrantVectorStore(client=client, collection_name="notes")
        return VectorStoreIndex.from_vector_store(store, embed_model=embed_model)

    def search(index: Any, q: str, k: int, flt: Any) -> list[tuple[str, float]]:
        found = index.as_retriever(similarity_top_k=k, filters=flt).retrieve(q)
        assert all(n.node.get_content() for n in found)
        return [(n.node.metadata.get("topic"), float(n.score)) for n in found]

    def add(index: Any, text: str, stage: str, meta: dict[str, Any]) -> str:
        index.insert(Document(text=text, metadata=meta, doc_id=f"added-{stage}"))
        flt = qm.Filter(
            must=[qm.FieldCondition(key="doc_id", match=qm.MatchValue(value=f"added-{stage}"))]
        )
        recs, _ = index.vector_store.client.scroll("notes", scroll_filter=flt, limit=10)
        assert len(recs) == 1
        return str(recs[0].id)

    def delete(index: Any, point: str) -> None:
        recs = index.vector_store.client.retrieve("notes", [point])
        index.delete_ref_doc(recs[0].payload["doc_id"])

    return {
        "app": app,
        "search": search,
        "add": add,
        "delete": delete,
        "topic_filter": lambda t: MetadataFilters(filters=[MetadataFilter(key="topic", value=t)]),
    }


def test_llama_index_local_model_through_a_whole_migration(
    tmp_path: Path, models: dict[str, Embedder]
) -> None:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    db = tmp_path / "qdrant"
    embed_model = HuggingFaceEmbedding(model_name=resolve_path(L6))
    write_llama_index(db, corpus(), embed_model)
    adopt = {"text_field": "_node_content", "text_format": "llama-index", "metadata_field": None}
    rt = Runtime(settings_for(tmp_path, f"local:{db}", "notes", adopt), swapped(models))
    try:
        start_migration(rt, progress=False, into="notes_l3")
        seen = run_app_migration(
            tmp_path, rt, "notes", **llama_index_app(embed_model), models=models,
            expect="vector-adapted",
        )  # fmt: skip
        assert "vector-adapted" in seen
    finally:
        rt.close()


class ProxyEmbeddings:
    """LangChain's OpenAIEmbeddings pointed at crossfade's /v1/embeddings, built once the
    proxy's URL is known (the app's only change: the base URL)."""

    def __init__(self) -> None:
        self.inner: Any = None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def test_langchain_openai_embeddings_through_crossfade_are_served_as_text(
    tmp_path: Path, models: dict[str, Embedder], langchain_db: Path
) -> None:
    """The app's embeddings come from crossfade's /v1/embeddings (the old model's, by name):
    every vector it sends back, query or write, is known by its text."""
    from langchain_core.embeddings import Embeddings
    from langchain_openai import OpenAIEmbeddings

    db = tmp_path / "qdrant"
    shutil.copytree(langchain_db, db)  # written before, with the same model
    rt = Runtime(settings_for(tmp_path, f"local:{db}", "docs", {}), swapped(models))
    via = ProxyEmbeddings()
    Embeddings.register(ProxyEmbeddings)
    parts = langchain_app(via)
    make = parts["app"]

    def app(client: QdrantClient) -> Any:
        url = str(client._client.rest_uri)  # type: ignore[attr-defined]
        via.inner = OpenAIEmbeddings(
            model="all-MiniLM-L6-v2",
            base_url=url.rstrip("/") + "/v1",
            api_key=RW_KEY,  # type: ignore[arg-type]
            check_embedding_ctx_length=False,  # as for any non-OpenAI model: no tiktoken
        )
        return make(client)

    try:
        start_migration(rt, progress=False, into="docs_l3")
        seen = run_app_migration(
            tmp_path, rt, "docs", **{**parts, "app": app}, models=models, expect="text"
        )
        assert set(seen) == {"text"}, set(seen)
    finally:
        rt.close()
