"""Issue-level check: 16 concurrent clients, 2,000 requests over real HTTP to a real proxy
process, with a gated cutover and a rollback in the middle: no failed request, and every
response comes wholly from one mode."""

from __future__ import annotations

from pathlib import Path

from loadtest.cutover import run


def test_cutover_and_rollback_under_load(tmp_path: Path, models: dict) -> None:
    summary = run(tmp_path / "data", clients=16, requests=2000, models=dict(models))
    assert summary["requests"] >= 2000
    assert summary["errors"] == 0, summary["error_samples"]
    assert summary["inconsistent"] == 0, summary["error_samples"]
    events = {e["action"]: e["result"] for e in summary["events"]}
    assert events["cutover"]["status"] == 200 and events["cutover"]["gate_ok"] is True
    assert events["rollback"] == {"status": 200, "to": "fused"}
    assert summary["modes"].get("fused", 0) > 0 and summary["modes"].get("new", 0) > 0
    assert len(summary["generations"]) >= 2
