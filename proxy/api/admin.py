"""The operator's switches (bearer key): mode, split, cutover, rollback, finish, canary; the
routing, plan and audit log."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import Field

from proxy.api.errors import refuse_new
from proxy.api.search import FORCE_NEW
from proxy.api.services import GUARDED, Services, Svc
from proxy.beir import load_beir
from proxy.config import Mode
from proxy.errors import Conflict, Invalid
from proxy.filters import StrictBody
from proxy.migration.canary import accept_drift, check_canaries, drift_alarms
from proxy.migration.cutover import new_too_early, why_no_cutover
from proxy.migration.plan import plan
from proxy.routing import routing_dict

router = APIRouter(dependencies=GUARDED)
WRITE = {400: {}, 401: {}, 409: {}, 413: {}, 422: {}}


class ModeIn(StrictBody):
    mode: Mode = Field(strict=False)
    force: bool = Field(False, description=FORCE_NEW)
    actor: str | None = Field(None, max_length=200)


class SplitIn(StrictBody):
    mode: Mode | None = Field(
        None, strict=False, description="Mode for the split share; null clears it."
    )
    percent: float = Field(0.0, ge=0, le=100)
    force: bool = Field(False, description=FORCE_NEW)
    actor: str | None = Field(None, max_length=200)


class CutoverIn(StrictBody):
    beir: str | None = Field(None, description="BEIR dir of labelled queries (default: config).")
    split: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    force: bool = Field(False, description="Switch even if the gate refuses (recorded).")
    actor: str | None = Field(None, max_length=200)


class ActorIn(StrictBody):
    actor: str | None = Field(None, max_length=200)


class FinishIn(StrictBody):
    now: bool = Field(False, description="Skip the guard period after the cutover.")
    drop: bool = Field(False, description="Delete the old index/vector; false = keep it, unused.")
    actor: str | None = Field(None, max_length=200)


class CanaryIn(StrictBody):
    action: Literal["check", "accept"] = Field(
        description="check: re-embed the canaries now; accept: lift a drift alarm (the "
        "canary is recorded afresh and vector writes naming the model are allowed again)."
    )
    actor: str | None = Field(None, max_length=200)


async def refusal(sv: Services, mode: Mode, force: bool) -> str | None:
    """Why a switch to `mode` is refused: its index missing, or `new` below the cutover's
    coverage without force."""
    why = sv.searcher.ready_for(mode)
    if why or mode is not Mode.NEW or force:
        return why
    early = new_too_early(await sv.searcher.coverage.refresh(), sv.settings.cutover)
    return refuse_new(early) if early else None


def forced(sv: Services, mode: Mode | None, force: bool) -> bool:
    """Whether force made the difference (recorded in the audit log as such)."""
    early = new_too_early(sv.searcher.coverage.value, sv.settings.cutover)
    return force and mode is Mode.NEW and early is not None


@router.get("/admin/routing", responses={401: {}})
async def get_routing(sv: Svc) -> Any:
    return routing_dict(sv.control.routing)


@router.post("/admin/mode", responses=WRITE)
async def set_mode(sv: Svc, body: ModeIn) -> Any:
    why = await refusal(sv, body.mode, body.force)
    if why:
        raise Conflict(why)
    action = "set mode (forced)" if forced(sv, body.mode, body.force) else "set mode"
    return await sv.control.switch(
        lambda now: replace(now, mode=body.mode), action, body.actor or "admin"
    )


@router.post("/admin/split", responses=WRITE)
async def set_split(sv: Svc, body: SplitIn) -> Any:
    if body.mode is not None and body.percent > 0:
        why = await refusal(sv, body.mode, body.force)
        if why:
            raise Conflict(why)
    split_mode = body.mode if body.percent > 0 else None
    action = "set split (forced)" if forced(sv, split_mode, body.force) else "set split"
    return await sv.control.switch(
        lambda now: replace(
            now, split_mode=body.mode, split_percent=body.percent if body.mode else 0.0
        ),
        action,
        body.actor or "admin",
    )


@router.post("/admin/cutover", responses=WRITE)
async def cutover(sv: Svc, body: CutoverIn) -> Any:
    settings = sv.settings
    configured = settings.cutover.eval_set
    beir = body.beir or (str(settings.data_path(configured)) if configured else None)
    data = None
    if beir:
        try:
            data = await asyncio.to_thread(
                load_beir, beir, body.split or settings.cutover.eval_split, False
            )
        except (OSError, ValueError) as e:
            raise Invalid(f"cannot read labelled queries from {beir!r}: {e}") from e
    why = sv.searcher.ready_for(Mode.NEW) or why_no_cutover(sv.control.routing)
    if why:
        raise Conflict(why)
    ok, result = await sv.control.cutover(sv.searcher, data, body.force, body.actor or "admin")
    if not ok:
        raise Conflict("cutover refused by the gate", gate=result)
    return result


@router.post("/admin/rollback", responses=WRITE)
async def rollback(sv: Svc, body: ActorIn | None = None) -> Any:
    ok, result = await sv.control.rollback((body.actor if body else None) or "admin")
    if not ok:
        raise Conflict(result["error"])
    return result


@router.post("/admin/finish", responses=WRITE)
async def finish(sv: Svc, body: FinishIn | None = None) -> Any:
    body = body or FinishIn()
    ok, result = await sv.control.finish(body.actor or "admin", body.now, body.drop)
    sv.retired.clear()  # searches see the retirement from now on, not a second later
    if not ok:
        raise Conflict(result["error"])
    return result


@router.post("/admin/canary", responses={400: {}, 401: {}, 413: {}, 422: {}})
async def canary(sv: Svc, body: CanaryIn) -> Any:
    """`check`: re-embed the hosted models' canaries now; `accept`: the operator's decision
    that a drift is harmless (canary recorded afresh, writes allowed again)."""
    rt = sv.rt
    if body.action == "check":
        sv.canary = await asyncio.to_thread(check_canaries, rt)
        return {"checked": sv.canary, "drift": drift_alarms(rt)}
    lifted = await asyncio.to_thread(accept_drift, rt)
    await asyncio.to_thread(
        sv.control.audit.append,
        {"action": "canary accept", "actor": body.actor or "admin", "lifted": lifted},
    )
    return {"lifted": lifted, "drift": drift_alarms(rt)}


@router.get("/admin/plan", responses={401: {}})
async def get_plan(sv: Svc, sample: int | None = None) -> Any:
    return await asyncio.to_thread(
        plan, sv.rt, sample if sample is None else max(8, min(sample, 10_000))
    )


@router.get("/admin/audit", responses={401: {}})
async def audit(sv: Svc, n: int = 50) -> Any:
    return await asyncio.to_thread(sv.control.audit.tail, max(1, min(n, 1000)))
