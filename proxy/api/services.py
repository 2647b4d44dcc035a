"""What every route shares, built once per app and kept on `app.state.services`; routes get it
with `Depends(services)`. Also the admin dependency (the bearer key) and the full status."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from proxy.availability import Health
from proxy.config import Settings
from proxy.metrics import Metrics
from proxy.migration.control import ControlPlane, available_actions
from proxy.migration.cutover import routing_dict
from proxy.migration.history import History
from proxy.migration.status import migration_status
from proxy.migration.worker import Reembedder, control_state
from proxy.runtime import Runtime
from proxy.search import Searcher
from proxy.security import admin_key, check_bearer

ADMIN_REFUSED = "admin endpoints need 'Authorization: Bearer <admin key>'"


class Services:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings: Settings = rt.settings
        self.metrics = Metrics()
        self.worker = Reembedder(rt)
        self.control = ControlPlane(rt)
        self.key = admin_key(rt.settings)
        self.history = History()
        self.health = Health(rt.store)
        self.background: set[asyncio.Task[Any]] = set()
        self.canary: Any = None  # the last canary check, per hosted model
        self._searcher: Searcher | None = None
        self._lazy_at, self._lazy_on = float("-inf"), True

    @property
    def started(self) -> bool:
        return self._searcher is not None

    def start(self, searcher: Searcher) -> None:
        self._searcher = searcher

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            raise RuntimeError("not started")
        return self._searcher

    def lazy_enabled(self) -> bool:
        """The persisted lazy switch, re-read at most once a second (not per request)."""
        if time.monotonic() - self._lazy_at > 1.0:
            self._lazy_on = control_state(self.rt.state, self.settings.migration)["lazy"]
            self._lazy_at = time.monotonic()
        return bool(self._lazy_on)

    def in_background(self, coro: Any) -> None:
        """Work that must not delay the response (enqueueing hits, shadow comparisons)."""
        t = asyncio.create_task(coro)
        self.background.add(t)
        t.add_done_callback(self.background.discard)

    async def full_status(self) -> dict[str, Any]:
        out = await asyncio.to_thread(migration_status, self.rt, self.worker, self.searcher)
        self.history.record_status(out)
        control = self.control
        out["routing"] = routing_dict(control.routing)
        out["actions"] = available_actions(
            control.routing,
            control.rollback_to,
            out["indexes"]["new"]["coverage"],
            self.settings.cutover,
            out["control"]["paused"],
        )
        out["shadow"] = control.shadow.summary()
        out["canary"] = self.canary
        out["last_gate"] = control.last_gate
        return out


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def admin(request: Request) -> None:
    """Dependency of every admin route (marks it for AdminGuard, which checks the key before
    the body is read; checked here again so a route can never miss it)."""
    if not check_bearer(request.headers.get("authorization"), services(request).key):
        raise HTTPException(401, ADMIN_REFUSED)


GUARDED = [Depends(admin)]
Svc = Annotated[Services, Depends(services)]
