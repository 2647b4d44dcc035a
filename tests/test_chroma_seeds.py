"""The seeds' migration, end to end on a real `chroma run` server: a SciFact collection written
by a plain chromadb app (its SentenceTransformerEmbeddingFunction over all-MiniLM-L6-v2, 384-d)
is adopted and migrated to all-mpnet-base-v2 (768-d) `--into` a new collection. The app,
changed only in host, port and key, queries, adds, updates and deletes through crossfade's
Chroma API at partial coverage, after the gated cutover, after a rollback, after the cutover
again; after finish a plain client opening the new collection (its persisted embedding
function: mpnet) gets the same top-10 as crossfade's new mode. A SciFact subset (mpnet on CPU
is slow: short passages, few of them)."""

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
from proxy.beir import load_beir
from proxy.config import Mode
from proxy.document import Doc
from proxy.migration.start import start_migration
from proxy.migration.status import verify
from proxy.model import Embedder
from proxy.runtime import Runtime
from tests.helpers import (
    L6_PATH,
    MPNET,
    RW_KEY,
    SCIFACT,
    LiveServer,
    chroma_adopt_settings,
    chroma_client,
    wait_for,
    wait_for_full_coverage,
)

pytestmark = pytest.mark.skipif(not SCIFACT.exists(), reason="../shared/data/scifact not present")

QUERIES = 12  # SciFact test queries; their relevant abstracts, and as many others
CHARS = 300  # of each abstract
ADMIN = "test-admin-key"


def scifact_subset() -> tuple[list[Doc], dict[str, str], dict[str, dict[str, int]]]:
    beir = load_beir(SCIFACT)
    qids = sorted(beir.queries)[:QUERIES]
    relevant = {d for q in qids for d in beir.qrels[q]}
    others = [d for d in beir.docs if d.doc_id not in relevant][: len(relevant)]
    chosen = [d for d in beir.docs if d.doc_id in relevant] + others
    docs = [
        Doc(d.doc_id, d.text[:CHARS], {"half": "ab"[i % 2], "n": i}) for i, d in enumerate(chosen)
    ]
    return docs, {q: beir.queries[q] for q in qids}, {q: beir.qrels[q] for q in qids}


def write_gate_set(root: Path, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> None:
    """The cutover gate's labelled set: the subset's SciFact queries and judgements."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"_id": q, "text": t}) for q, t in queries.items()]
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    judged = [f"{q}\t{d}\t{s}" for q, r in qrels.items() for d, s in r.items()]
    (root / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(judged) + "\n")
    (root / "corpus.jsonl").write_text("")


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_seeds_migration_l6_to_mpnet_on_a_real_chroma_server(
    tmp_path: Path, models: dict[str, Embedder], mpnet: Embedder, chroma_server: Any
) -> None:
    docs, queries, qrels = scifact_subset()
    run = uuid.uuid4().hex[:8]
    old_name, new_name = f"scifact-{run}", f"scifact-mpnet-{run}"
    l6_ef = SentenceTransformerEmbeddingFunction(model_name=L6_PATH)

    # The app as it was: a plain chromadb client on the Chroma server, its function embeds.
    direct = chroma_client(chroma_server.url)
    direct.create_collection(old_name, embedding_function=l6_ef).add(
        ids=[d.doc_id for d in docs],
        documents=[d.text for d in docs],
        metadatas=[d.metadata for d in docs],  # type: ignore[misc]
    )

    settings = chroma_adopt_settings(
        tmp_path / "data",
        chroma_server.url,
        old_name,
        # the README's Chroma config: the new index named in it (--into places it anyway)
        {"backend": "chroma", "url": chroma_server.url, "collection": new_name},
        # the backfill stops at half until the test lets it go on: fused at partial coverage
        migration={"batch_size": 16, "cpu_share": 1.0, "until": 50.0},
        server={"admin_key": ADMIN},
    )
    write_gate_set(settings.data_path("eval"), queries, qrels)
    l6 = models["new"]  # the demo's new model is this all-MiniLM-L6-v2
    rt = Runtime(settings, {"old": l6, "new": mpnet})
    try:
        started = start_migration(rt, progress=False, into=new_name)
        assert started["adopted"]["identity"]["matching"] > 0 and started["seeded"] == len(docs)

        with LiveServer(create_app(rt)) as srv:
            paths: list[str] = []
            app = chroma_client(srv.url, RW_KEY)  # the app, changed only in host, port and key
            app._server._session.event_hooks["response"].append(  # type: ignore[attr-defined]
                lambda r: paths.append(r.headers.get("x-crossfade-query", ""))
            )
            col = app.get_collection(old_name, embedding_function=l6_ef)
            # an app that gives no function embeds with the one its collection persisted (L6)
            persisted = app.get_collection(old_name).configuration["embedding_function"]
            assert persisted.get_config()["model_name"] == L6_PATH
            admin = {"Authorization": f"Bearer {ADMIN}"}

            def status() -> dict[str, Any]:
                return httpx.get(srv.url + "/migration", timeout=60).json()

            def post(path: str, body: dict[str, Any] | None = None) -> httpx.Response:
                return httpx.post(srv.url + path, json=body or {}, headers=admin, timeout=600)

            def stored(name: str, doc_id: str) -> tuple[list[Any], list[Any], list[Any]]:
                got = direct.get_collection(name, embedding_function=None).get(
                    ids=[doc_id], include=["documents", "metadatas", "embeddings"]
                )
                embeddings = [] if got["embeddings"] is None else list(got["embeddings"])
                return got["documents"], got["metadatas"], embeddings

            def exercise(stage: str) -> None:
                texts = list(queries.values())[:4]
                got = col.query(query_texts=texts, n_results=10)
                assert [len(ids) for ids in got["ids"]] == [10] * 4, stage
                assert all(i in {d.doc_id for d in docs} for ids in got["ids"] for i in ids)
                half = col.query(query_texts=texts[:1], n_results=5, where={"half": "b"})
                assert half["metadatas"][0] and all(m["half"] == "b" for m in half["metadatas"][0])
                # add, update, delete: in both collections, each with its own model's vector
                doc_id = f"added-{stage}"
                text = f"{stage}: vitamin D supplementation and bone density in older adults"
                col.add(ids=[doc_id], documents=[text], metadatas=[{"half": "a", "n": -1}])
                edited = f"{text}, a randomised trial"
                col.update(ids=[doc_id], documents=[edited], metadatas=[{"half": "b", "n": -1}])
                for name, model in ((old_name, l6), (new_name, mpnet)):
                    documents, metadatas, vectors = stored(name, doc_id)
                    assert documents == [edited] and metadatas == [{"half": "b", "n": -1}], name
                    want = model.embed_documents([edited])[0]
                    assert len(vectors) == 1 and cosine(vectors[0], want) > 0.99, (stage, name)
                assert col.get(ids=[doc_id])["documents"] == [edited]
                col.delete(ids=[doc_id])
                for name in (old_name, new_name):
                    assert stored(name, doc_id)[0] == [], (stage, name)
                assert col.count() == len(docs), stage

            # partial coverage: crossfade's own text search is fused (both dense lists and
            # BM25); the app's L6 vectors are served from the old index (too few documents
            # here for a query map old -> new: vector-old)
            wait_for(lambda: status()["indexes"]["new"]["coverage"] >= 0.45, 600, "half")
            assert status()["indexes"]["new"]["coverage"] < 1.0
            fused = asyncio.run(rt.searcher().search(docs[0].text, 10, Mode.FUSED, fields=()))
            lists = {name for h in fused.hits for name in h.ranks if h.ranks[name] is not None}
            assert {"old", "new", "bm25"} <= lists, lists
            exercise("fused")
            assert paths[-1] == "vector-old" or "vector-old" in paths, paths[-8:]

            assert post("/migration/backfill", {"until": 100.0}).status_code == 200
            wait_for_full_coverage(srv.url, timeout=900)
            cut = post("/admin/cutover")
            assert cut.status_code == 200 and cut.json()["ok"], cut.text  # the gate passed
            exercise("cutover")
            assert post("/admin/rollback").status_code == 200
            exercise("rollback")
            assert post("/admin/cutover").status_code == 200
            exercise("cutover-again")
            fin = post("/admin/finish", {"now": True})
            assert fin.status_code == 200, fin.text

            # after finish the app's L6 vectors can't be served (no query map): a Chroma-shaped
            # refusal naming the new model; the app moves to mpnet (NEW's persisted function)
            with pytest.raises(Exception, match="all-mpnet-base-v2"):
                col.query(query_texts=["vitamin D"], n_results=3)
            # ... and now NEW's (mpnet), as an app that opens its collection without one gets it
            through = app.get_collection(old_name)
            mpnet_ef = through.configuration["embedding_function"]
            assert mpnet_ef.get_config()["model_name"] == MPNET["path"]

            # a plain client opening NEW: its persisted function embeds with mpnet, and it gets
            # crossfade's new-mode top-10 (the new index's dense list; the same vectors)
            plain = direct.get_collection(new_name)
            assert (
                plain.configuration_json["embedding_function"]["config"]["model_name"]
                == (MPNET["path"])
            )
            for q in queries.values():
                theirs = plain.query(query_texts=[q], n_results=10)["ids"][0]
                ours = [i for i, _ in rt.store("new").search_dense(mpnet.embed_queries([q])[0], 10)]
                assert theirs == ours, (q, theirs, ours)
                assert through.query(query_texts=[q], n_results=10)["ids"][0] == ours
            assert paths[-1] == "vector-new", paths[-4:]

        report = verify(rt, sample=8)
        assert report["ok"], report["problems"]
        assert plain.count() == len(docs)  # nothing lost, nothing left over
    finally:
        rt.close()
    for name in (old_name, new_name):
        direct.delete_collection(name)
