"""Operations: liveness, readiness, Prometheus metrics, the dashboard. (/docs and
/openapi.json come from FastAPIOffline, with Swagger UI's assets from the package.)"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.api.errors import OrjsonResponse, error
from proxy.api.services import Svc, access
from proxy.availability import readiness
from proxy.routing import routing_dict
from proxy.security import Access

router = APIRouter()
DASHBOARD = Path(__file__).parents[1] / "static" / "dashboard.html"


@router.get("/healthz")
@access(Access.OPEN)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {}})
@access(Access.OPEN)
async def readyz(sv: Svc) -> OrjsonResponse:
    if not sv.started:
        return error(503, "models are loading")
    indexes = await sv.health.check()
    why, degraded = readiness(sv.control.modes_in_use(), sv.settings.fusion, indexes)
    report = {side: st.as_dict() for side, st in indexes.items()}
    if why:
        extra = {"degraded": degraded} if degraded else {}
        return error(503, why, ready=False, indexes=report, **extra)
    return OrjsonResponse(
        {
            "ready": True,
            "routing": routing_dict(sv.control.routing),
            "coverage": sv.searcher.coverage.value,
            "indexes": report,
        }
    )


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
@access(Access.OPEN)  # the page; the figures it fetches are reads
async def dashboard() -> HTMLResponse:
    return HTMLResponse(DASHBOARD.read_text(), headers={"Cache-Control": "no-store"})


@router.get(
    "/metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def prometheus(sv: Svc) -> Response:
    sv.metrics.update(await sv.figures())  # recomputed at most once per metrics_cache_s
    return Response(generate_latest(sv.metrics.registry), media_type=CONTENT_TYPE_LATEST)
