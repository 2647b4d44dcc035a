"""The migration's state for everyone (status, history, drift) and backfill control (admin)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import Field

from proxy.api.services import GUARDED, Svc
from proxy.filters import StrictBody
from proxy.migration.drift import drift_report

router = APIRouter()


class BackfillControl(StrictBody):
    action: Literal["pause", "resume"] | None = None
    backfill: bool | None = Field(None, description="Enable or disable the background sweep.")
    until: float | None = Field(
        None, ge=0, le=100, description="Stop the sweep at this coverage %."
    )
    max_spend: float | None = Field(
        None, ge=0, description="Spend cap of the migration (0 = none); raise it to resume."
    )
    actor: str | None = Field(None, max_length=200)


@router.get("/migration")
async def get_migration(sv: Svc) -> Any:
    return await sv.full_status()


@router.get("/migration/history")
async def get_history(sv: Svc, since: float = 0.0) -> Any:
    """Coverage samples (unix time `t`) newer than `since`, oldest first."""
    return {"samples": sv.history.since(since)}


@router.get("/drift")
async def drift(sv: Svc) -> Any:
    return await asyncio.to_thread(drift_report, sv.rt, sv.control.modes_in_use())


@router.post(
    "/migration/backfill",
    responses={400: {}, 401: {}, 413: {}, 422: {}},
    dependencies=GUARDED,
)
async def backfill(sv: Svc, body: BackfillControl) -> Any:
    return await asyncio.to_thread(
        sv.control.steer_backfill,
        body.actor or "admin",
        body.action,
        body.backfill,
        body.until,
        body.max_spend,
    )
