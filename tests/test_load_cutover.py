"""Issue-level check: 16 concurrent clients, 2,000 requests over real HTTP to a real proxy
process, with a gated cutover and a rollback in the middle: no failed request, and every
response comes wholly from one mode."""

from __future__ import annotations

from pathlib import Path

from loadtest.cutover import run
from proxy.demo import python_reference


def test_cutover_and_rollback_under_load(tmp_path: Path, models: dict) -> None:
    # Every third passage of the demo corpus (each topic the gate's questions judge keeps a
    # third of its passages): the load is what is tested, and backfilling the whole corpus
    # with the new model before it was most of this test's time.
    docs = python_reference()[::3]
    summary = run(tmp_path / "data", clients=16, requests=2000, models=dict(models), docs=docs)
    assert summary["requests"] >= 2000
    assert summary["errors"] == 0, summary["error_samples"]
    assert summary["inconsistent"] == 0, summary["error_samples"]
    events = {e["action"]: e["result"] for e in summary["events"]}
    assert events["cutover"]["status"] == 200 and events["cutover"]["gate_ok"] is True
    assert events["rollback"] == {"status": 200, "to": "fused"}
    assert summary["modes"].get("fused", 0) > 0 and summary["modes"].get("new", 0) > 0
    assert len(summary["generations"]) >= 2
