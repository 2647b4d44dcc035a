"""Two migrations in a row on the embedded engine: A -> B, finish, B -> C, finish; each
gated, drift clean after each, and the audit log telling the whole story."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.demo import python_reference, write_eval_set
from proxy.embedding import load_embedder
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.migration.worker import Reembedder
from proxy.model import Embedder
from proxy.runtime import Runtime
from tests.helpers import RW, LiveServer, demo_settings, drain

pytestmark = pytest.mark.slow
KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
DOCS = [d for d in python_reference() if d.metadata["topic"] in {"assert", "for", "while", "try"}]


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=ADMIN, timeout=600)


def migrate(rt: Runtime, eval_dir: Path) -> dict[str, Any]:
    """start -> backfill -> gated cutover -> drift clean -> finish (dropping the old index)."""
    start_migration(rt, progress=False)
    drain(Reembedder(rt))
    with LiveServer(create_app(rt)) as srv:
        early = post(srv.url, "/admin/finish", {"now": True})
        assert early.status_code == 409 and "needs a cutover first" in early.json()["error"]
        cut = post(srv.url, "/admin/cutover", {"beir": str(eval_dir)})
        assert cut.status_code == 200 and cut.json()["ok"], cut.text
        guarded = post(srv.url, "/admin/finish", {})
        assert guarded.status_code == 409 and "guard period" in guarded.json()["error"]
        drift = httpx.get(srv.url + "/drift", timeout=30).json()
        assert drift["alarm"] is False and drift["indexes"]["new"]["serving"]
        fin = post(srv.url, "/admin/finish", {"now": True, "drop": True})
        assert fin.status_code == 200, fin.text
        assert fin.json()["old_index"]["retired"] == "dropped"
        # No dual write any more: a document update goes to the serving index alone.
        put = httpx.put(
            srv.url + "/documents",
            json={"documents": [{"id": "assert#0", "text": "assert checks a condition."}]},
            headers=RW,
            timeout=60,
        )
        assert put.json()["indexes"] == ["new"]
        assert httpx.get(srv.url + "/drift", timeout=30).json()["alarm"] is False
        audit = httpx.get(srv.url + "/admin/audit", headers=ADMIN, timeout=30).json()
    rt.close()
    return {"audit": audit}


def test_two_migrations_in_a_row(tmp_path: Path, models: dict[str, Embedder]) -> None:
    data = tmp_path / "data"
    eval_dir = write_eval_set(tmp_path / "eval", DOCS)
    gate = {"max_ndcg_drop": 0.2, "max_recall_drop": 0.2}  # C is B at a shorter token limit
    s1 = demo_settings(data, server={"admin_key": KEY}, cutover=gate)
    rt = Runtime(s1, dict(models))
    ingest(rt, "old", DOCS, progress=False)
    migrate(rt, eval_dir)  # A (L3) -> B (L6)
    assert not (data / "old").exists()  # dropped, as the finish said

    # The next migration starts from what serves: B is now the old side, C the new one.
    b = s1.models.new.model_dump()
    c = {**b, "name": "all-MiniLM-L6-v2-128", "max_length": 128}
    s2 = demo_settings(
        data,
        server={"admin_key": KEY},
        cutover=gate,
        models={"old": b, "new": c},
        indexes={
            "old": {"backend": "edge", "path": "new"},
            "new": {"backend": "edge", "path": "c"},
        },
    )
    rt = Runtime(s2, {"old": models["new"], "new": load_embedder(s2.models.new)})
    assert rt.model("old").fingerprint.id != rt.model("new").fingerprint.id
    audit = migrate(rt, eval_dir)["audit"]

    story = [a["action"] for a in audit if a["action"] != "recovered"]
    assert story == [
        "migrate start (lazy)",
        "cutover",
        "migrate finish (--now)",
        "migrate start (lazy)",
        "cutover",
        "migrate finish (--now)",
    ]
    starts = [a for a in audit if a["action"].startswith("migrate start")]
    assert starts[0]["new"] == starts[1]["old"]  # B was new, then old
    assert starts[1]["new"] != starts[0]["old"]
