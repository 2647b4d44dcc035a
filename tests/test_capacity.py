"""The capacity plan's arithmetic (proxy/migration/plan.py): pure functions, no model."""

from __future__ import annotations

import pytest

from proxy.migration.plan import (
    OPENAI_TPM_TIERS,
    api_plan,
    capacity,
    store_limit_workers,
    throughput,
    workers_plan,
)


def test_throughput_embedding_bound() -> None:
    t = throughput(3_600_000, 100.0, 5_000.0)
    assert t == {"docs_per_s": 100.0, "hours": 10.0, "bound_by": "embedding"}


def test_throughput_store_bound() -> None:
    t = throughput(3_600_000, 10_000.0, 1_000.0)
    assert t == {"docs_per_s": 1_000.0, "hours": 1.0, "bound_by": "vector store writes"}


def test_throughput_without_store_rate() -> None:
    assert throughput(360, 1.0, None)["bound_by"] == "embedding"
    with pytest.raises(ValueError):
        throughput(1, 0.0, None)


def test_workers_scale_linearly_until_the_store_binds() -> None:
    rows = workers_plan(
        10_000_000, 50.0, [1, 10, 100], store_points_per_s=2_000.0, cost_per_worker_hour=0.5
    )
    assert [r["docs_per_s"] for r in rows] == [50.0, 500.0, 2_000.0]
    assert [r["bound_by"] for r in rows] == ["embedding", "embedding", "vector store writes"]
    assert rows[0]["hours"] == round(10_000_000 / 50 / 3600, 2)
    assert rows[1]["cost"] == round(rows[1]["hours"] * 10 * 0.5, 2)
    assert "cost" not in workers_plan(1, 1.0, [1])[0]


def test_api_tiers_rate_from_tpm_and_one_cost() -> None:
    rows = api_plan(10_000_000, 300.0, 0.02, {"a": 1_000_000, "b": 10_000_000})
    assert rows[0]["docs_per_s"] == round(1_000_000 / 60 / 300, 1)
    assert rows[0]["hours"] == round(10_000_000 / (1_000_000 / 60 / 300) / 3600, 2)
    assert rows[0]["cost"] == rows[1]["cost"] == 60.0  # 3e9 tokens at $0.02/M
    bound = api_plan(10_000_000, 300.0, 0.02, {"b": 10_000_000}, store_points_per_s=100.0)
    assert bound[0]["bound_by"] == "vector store writes"


def test_capacity_gpu_rate_only_when_given() -> None:
    plan = capacity(10_000_000, 250.0, 40.0, 6_000.0, 0.02, [1, 8])
    assert "gpus" not in plan and plan["store_limit"]["gpus_to_reach_it"] is None
    assert [r["tier"] for r in plan["openai"]] == list(OPENAI_TPM_TIERS)
    assert plan["store_limit"]["cpu_workers_to_reach_it"] == 150.0
    plan = capacity(
        10_000_000,
        250.0,
        40.0,
        6_000.0,
        0.02,
        [1],
        gpu_docs_per_s=1_000.0,
        gpus=[1, 8],
        gpu_hour=2.0,
    )
    assert [r["bound_by"] for r in plan["gpus"]] == ["embedding", "vector store writes"]
    assert plan["store_limit"]["gpus_to_reach_it"] == 6.0
    assert store_limit_workers(40.0, 6_000.0) == 150.0
