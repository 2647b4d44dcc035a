"""`migrate start --in-place` on the embedded engine: the new model's named vector and the BM25
vector join the old index's live edge shard (no point copied), and the whole migration runs on
that one shard through HTTP: fused search, a dual write, backfill to 100%, gated cutover,
rollback, cutover, drift, finish (dropping or keeping the old vector). The old vector and the
payloads stay as they were apart from the dual write. Then B -> C in place again, and in place
after a migration into a shard of its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import qdrant_edge as qe
import yaml

from proxy.app import create_app
from proxy.cli import main
from proxy.config import Settings
from proxy.demo import python_reference, write_eval_set
from proxy.embedding import load_embedder
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.migration.worker import Reembedder
from proxy.model import Embedder
from proxy.point import make_point
from proxy.runtime import Runtime
from proxy.store import FingerprintMismatch, point_id
from proxy.store.edge import META_FILE
from tests.helpers import (
    ROOT,
    RW,
    CachedDocuments,
    LiveServer,
    cli_config,
    demo_settings,
    drain,
    free_port,
    wait_for_full_coverage,
)

pytestmark = pytest.mark.slow
KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
QUESTIONS = (ROOT / "config" / "demo-eval" / "questions.tsv").read_text()
# The passages of the topics the demo's questions judge, but for the three largest: ~130.
JUDGED = set(QUESTIONS.split()) - {"specialnames", "formatstrings", "string-methods"}
DOCS = [d for d in python_reference() if d.metadata["topic"] in JUDGED]
EDITED = ("for#0", "The for statement iterates over the items of any sequence, edited.")
# C is B at a shorter token limit, and B (L6) is scored against A (L3) on few questions.
GATE = {"max_ndcg_drop": 0.2, "max_recall_drop": 0.2}
B_NAME = "all-MiniLM-L6-v2"  # the default name of the vector added in place: the model's


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=ADMIN, timeout=600)


def bindings(shard_dir: Path) -> dict[str, Any]:
    return json.loads((shard_dir / META_FILE).read_text())  # type: ignore[no-any-return]


def checksum(shard: qe.EdgeShard, vector: str, skip: str = "") -> tuple[int, str]:
    """Point count and a hash of every point's id, payload and `vector` (one point skipped)."""
    h = hashlib.sha256()
    offset, n = None, 0
    while True:
        recs, offset = shard.scroll(
            qe.ScrollRequest(offset=offset, limit=256, with_payload=True, with_vector=[vector])
        )
        for r in sorted(recs, key=lambda r: str(r.id)):
            if str(r.id) == point_id(skip):
                continue
            vec = (r.vector or {}).get(vector)
            h.update(json.dumps([str(r.id), r.payload, vec], sort_keys=True).encode())
            n += 1
        if offset is None:
            return n, h.hexdigest()


def vectors_of(shard: qe.EdgeShard, doc_id: str) -> dict[str, Any]:
    rec = shard.retrieve([point_id(doc_id)], True, True)[0]
    return {"payload": rec.payload, **(rec.vector or {})}


def cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def settings(data: Path, **kw: Any) -> Settings:
    # The backfill is waited for with no queries to leave CPU for: no idle share.
    return demo_settings(
        data,
        server={"admin_key": KEY},
        cutover={**GATE, "eval_set": "eval"},
        migration={"cpu_share": 1.0},
        **kw,
    )


def serve_migration(rt: Runtime, drop: bool) -> dict[str, Any]:
    """Fused search, one dual write, backfill to 100% by the serving proxy's worker, gated
    cutover, rollback, cutover, drift clean, finish; returns what the test checks after."""
    shard = rt.store("old").shard  # type: ignore[attr-defined]
    old_vector = rt.store("old").vector
    out: dict[str, Any] = {"before": checksum(shard, old_vector, skip=EDITED[0])}
    with LiveServer(create_app(rt)) as srv:
        r = httpx.post(srv.url + "/search", json={"query": "loop over a list", "k": 5}, timeout=60)
        hits = r.json()["results"]
        assert r.json()["mode"] == "fused" and len(hits) == 5
        by_id = {d.doc_id: d for d in DOCS}
        assert all(h["metadata"] == by_id[h["doc_id"]].metadata for h in hits)
        put = httpx.put(
            srv.url + "/documents",
            json={"documents": [{"id": EDITED[0], "text": EDITED[1], "metadata": {"e": 1}}]},
            headers=RW,
            timeout=60,
        )
        assert put.status_code == 200 and put.json()["indexes"] == ["old", "new"], put.text
        wait_for_full_coverage(srv.url)
        out["coverage"] = httpx.get(srv.url + "/migration", timeout=30).json()["indexes"]
        # Before finish: the old vector and every payload as they were, but the dual write.
        out["after"] = checksum(shard, old_vector, skip=EDITED[0])
        out["edited"] = vectors_of(shard, EDITED[0])
        cut = post(srv.url, "/admin/cutover", {})
        assert cut.status_code == 200 and cut.json()["ok"], cut.text
        assert post(srv.url, "/admin/rollback", {}).status_code == 200
        back = httpx.post(srv.url + "/search", json={"query": "while loop", "k": 3}, timeout=60)
        assert back.json()["mode"] == "fused"
        assert post(srv.url, "/admin/cutover", {}).status_code == 200
        drift = httpx.get(srv.url + "/drift", timeout=30).json()
        assert drift["alarm"] is False and drift["indexes"]["new"]["serving"], drift
        new = httpx.post(srv.url + "/search", json={"query": "while loop", "k": 3}, timeout=60)
        assert new.json()["mode"] == "new" and new.json()["results"]
        fin = post(srv.url, "/admin/finish", {"now": True, "drop": drop})
        assert fin.status_code == 200, fin.text
        out["finish"] = fin.json()
        put = httpx.put(
            srv.url + "/documents",
            json={"documents": [{"id": "if#0", "text": "if, edited."}]},
            headers=RW,
        )
        assert put.json()["indexes"] == ["new"]  # no dual write after finish
        assert httpx.get(srv.url + "/drift", timeout=30).json()["alarm"] is False
        out["audit"] = httpx.get(srv.url + "/admin/audit", headers=ADMIN, timeout=30).json()
    return out


def b_and_c(data: Path) -> dict[str, Any]:
    """B is the old model of the next migration, C (B at a shorter token limit, another
    fingerprint) the new one."""
    b = settings(data).models.new.model_dump()
    return {"old": b, "new": {**b, "name": "all-MiniLM-L6-v2-128", "max_length": 128}}


@pytest.fixture(scope="module")
def cached(cached_models: dict[str, Embedder]) -> dict[str, Embedder]:
    """Both migrating tests backfill the same passages with B, then with C: each model embeds
    each text once (and C is loaded once). Vectors are compared against `models`, uncached."""
    c = load_embedder(settings(Path("data"), models=b_and_c(Path("data"))).models.new)
    return {**cached_models, "c": CachedDocuments(c)}


def b_to_c(data: Path, cached: dict[str, Embedder], old_index: dict[str, Any]) -> Runtime:
    """The next migration, from what serves: B to C."""
    s2 = settings(
        data,
        models=b_and_c(data),
        indexes={"old": old_index, "new": {"backend": "edge", "path": "c"}},
    )
    return Runtime(s2, {"old": cached["new"], "new": cached["c"]})


def test_in_place_on_edge_then_again(
    tmp_path: Path, models: dict[str, Embedder], cached: dict[str, Embedder]
) -> None:
    data = tmp_path / "data"
    shard_dir = data / "old"
    write_eval_set(data / "eval", DOCS)
    rt = Runtime(settings(data), {"old": cached["old"], "new": cached["new"]})
    ingest(rt, "old", DOCS, progress=False)
    started = start_migration(rt, progress=False, in_place=True)
    assert started["placement"] == {"engine": "edge", "path": "old", "vector": B_NAME}
    assert started["seeded"] == len(DOCS) and started["migrated"] == 0
    assert not (data / "new").exists()  # no copy: the new index lives in the old shard
    new = rt.store("new")
    assert new.path == shard_dir and new.vector == B_NAME  # type: ignore[attr-defined]
    fp_a, fp_b = (rt.model(s).fingerprint.id for s in ("old", "new"))
    assert {k: v["fingerprint"] for k, v in bindings(shard_dir)["vectors"].items()} == {
        "dense": fp_a,
        B_NAME: fp_b,
    }
    try:
        out = serve_migration(rt, drop=True)
    finally:
        rt.close()
    assert out["before"] == out["after"] and out["before"][0] == len(DOCS) - 1
    assert out["coverage"]["new"]["documents"] == len(DOCS)
    edited = out["edited"]  # the dual write: both vectors of the new text, its payload
    assert edited["payload"]["text"] == EDITED[1] and edited["payload"]["metadata"] == {"e": 1}
    assert cos(edited["dense"], models["old"].embed_documents([EDITED[1]])[0]) > 0.999
    assert cos(edited[B_NAME], models["new"].embed_documents([EDITED[1]])[0]) > 0.999
    assert edited["payload"]["model_fingerprint"] == fp_a  # the bookkeeping is the old vector's
    assert out["finish"]["old_index"] == {
        "where": f"edge shard {shard_dir}, vector 'dense'",
        "retired": "dropped",
    }

    # Dropped: the shard no longer has the old vector, nor its bookkeeping; B serves on.
    assert list(bindings(shard_dir)["vectors"]) == [B_NAME]
    shard = qe.EdgeShard.load(str(shard_dir))
    try:
        with pytest.raises(Exception, match="Not existing vector name"):
            shard.query(
                qe.QueryRequest(limit=1, query=qe.Query.Nearest([0.1] * 384, using="dense"))
            )
        has_b = qe.Filter(must=[qe.HasVectorCondition(B_NAME)])
        assert shard.count(qe.CountRequest(exact=True, filter=has_b)) == len(DOCS)
        recs, _ = shard.scroll(qe.ScrollRequest(limit=500, with_payload=True))
        assert recs and not any("model_fingerprint" in (r.payload or {}) for r in recs)
    finally:
        shard.close()

    # B -> C, in place again: the config names what serves (B, in the same shard) as old.
    rt = b_to_c(data, cached, {"backend": "edge", "path": "old", "vector": B_NAME})
    started = start_migration(rt, progress=False, in_place=True)
    assert started["placement"]["vector"] == "all-MiniLM-L6-v2-128"
    assert started["seeded"] == 0  # every point holds the BM25 vector already
    try:
        out = serve_migration(rt, drop=False)
    finally:
        rt.close()
    assert out["before"] == out["after"]
    assert out["finish"]["old_index"]["retired"].startswith("kept")
    kept = bindings(shard_dir)["vectors"]
    assert list(kept) == [B_NAME, "all-MiniLM-L6-v2-128"]  # kept: still there, still bound
    shard = qe.EdgeShard.load(str(shard_dir))
    try:
        has_b = qe.Filter(must=[qe.HasVectorCondition(B_NAME)])
        assert shard.count(qe.CountRequest(exact=True, filter=has_b)) == len(DOCS)
    finally:
        shard.close()

    story = [(a["action"], a.get("old"), a.get("new")) for a in out["audit"]]
    story = [s for s in story if s[0] != "recovered"]
    fp_c = started["new_fingerprint"]
    assert story == [
        ("migrate start (lazy)", fp_a, fp_b),
        ("cutover", None, None),
        ("rollback", None, None),
        ("cutover", None, None),
        ("migrate finish (--now)", None, None),
        ("migrate start (lazy)", fp_b, fp_c),
        ("cutover", None, None),
        ("rollback", None, None),
        ("cutover", None, None),
        ("migrate finish (--now)", None, None),
    ]
    finishes = [a for a in out["audit"] if a["action"].startswith("migrate finish")]
    assert [f["old_index"]["retired"] for f in finishes] == [
        "dropped",
        "kept (no longer written or read)",
    ]


def test_in_place_after_a_migration_into_its_own_shard(
    tmp_path: Path, cached: dict[str, Embedder]
) -> None:
    """A -> B into shard `new` (the usual way), finish; then B -> C in place in that shard,
    whose first vector carries the per-point bookkeeping: dropped with it at finish."""
    docs = DOCS[:40]
    data = tmp_path / "data"
    write_eval_set(data / "eval", docs)
    rt = Runtime(settings(data), {"old": cached["old"], "new": cached["new"]})
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)
    drain(Reembedder(rt))
    with LiveServer(create_app(rt)) as srv:
        assert post(srv.url, "/admin/cutover", {}).json()["ok"]
        assert post(srv.url, "/admin/finish", {"now": True, "drop": True}).status_code == 200
    rt.close()

    rt = b_to_c(data, cached, {"backend": "edge", "path": "new"})
    fp_c = rt.model("new").fingerprint.id
    try:
        start_migration(rt, progress=False, in_place=True, vector="c")
        assert rt.store("new").path == data / "new"  # type: ignore[attr-defined]
        drain(Reembedder(rt))
        with LiveServer(create_app(rt)) as srv:
            assert httpx.get(srv.url + "/drift", timeout=30).json()["alarm"] is False
            assert post(srv.url, "/admin/cutover", {}).json()["ok"]
            fin = post(srv.url, "/admin/finish", {"now": True, "drop": True})
            assert fin.json()["old_index"]["retired"] == "dropped", fin.text
            drift = httpx.get(srv.url + "/drift", timeout=30).json()
            assert drift["alarm"] is False and drift["indexes"]["new"]["fingerprints"] == {
                fp_c: len(docs)
            }
            hits = httpx.post(srv.url + "/search", json={"query": "for loop", "k": 3}).json()
            assert hits["mode"] == "new" and len(hits["results"]) == 3
    finally:
        rt.close()
    assert bindings(data / "new") == {
        "vectors": {"c": {"dim": 384, "fingerprint": fp_c, "sparse": True}},
        "tracked": None,
    }


def test_in_place_refusals_and_the_bilingual_guard(
    tmp_path: Path, models: dict[str, Embedder], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    with Runtime(demo_settings(data), dict(models)) as rt:
        ingest(rt, "old", DOCS[:8], progress=False)
    cfg = str(cli_config(tmp_path / "cfg.yaml", data, free_port()))
    before = bindings(data / "old")
    for name in ("dense", "bm25"):  # the old vector's name, the BM25 vector's
        assert main(["--config", cfg, "migrate", "start", "--in-place", "--vector", name]) == 1
        assert f"needs another name than '{name}'" in capsys.readouterr().err
    assert main(["--config", cfg, "migrate", "start", "--into", "elsewhere"]) == 1
    assert "--into is for an adopted collection" in capsys.readouterr().err
    assert bindings(data / "old") == before  # nothing written

    assert main(["--config", cfg, "migrate", "start", "--in-place", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["placement"]["vector"] == B_NAME and out["seeded"] == 8
    bound = bindings(data / "old")

    # A vector name is bound to one model: another model can't take it, nor write into it.
    other = yaml.safe_load(Path(cfg).read_text())
    other["models"]["new"].update(name="all-MiniLM-L6-v2-128", max_length=128)
    Path(cfg).write_text(yaml.safe_dump(other))
    assert main(["--config", cfg, "migrate", "start", "--in-place", "--vector", B_NAME]) == 1
    assert "refusing to mix models in one index" in capsys.readouterr().err
    assert bindings(data / "old") == bound
    with Runtime(demo_settings(data), dict(models)) as rt:
        doc = DOCS[0]
        with pytest.raises(FingerprintMismatch, match="bound to 'all-MiniLM-L6-v2@"):
            rt.store("new").upsert(
                [make_point(rt, "old", doc, rt.model("old").embed_documents([doc.text])[0])]
            )
