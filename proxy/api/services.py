"""What every route shares, built once per app and kept on `app.state.services`; routes get it
with `Depends(services)`. Also the admin dependency (the admin key), the marks of what each
route needs (`access`), and the full status."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request

from proxy.adapter import QueryMap
from proxy.availability import Health
from proxy.config import Settings
from proxy.every import Every
from proxy.metrics import Metrics
from proxy.migration.control import ControlPlane, available_actions
from proxy.migration.finish import retired
from proxy.migration.history import History
from proxy.migration.query_map import map_status
from proxy.migration.sidecars import SidecarFollower
from proxy.migration.status import migration_status
from proxy.migration.worker import Reembedder, control_state
from proxy.remembered import RememberedTexts
from proxy.routing import routing_dict
from proxy.runtime import Runtime
from proxy.search import Searcher
from proxy.security import Access, Keyring, admin_key, presented_key
from proxy.state import StateUnavailable

log = logging.getLogger("crossfade")
ADMIN_REFUSED = "admin endpoints need the admin key ('Authorization: Bearer <admin key>')"
F = TypeVar("F", bound=Callable[..., Any])


def access(level: Access) -> Callable[[F], F]:
    """Marks a route's endpoint with what it needs (proxy.api.middleware.Gate checks it before
    the body is read). Unmarked: a key for reads (GET) and a read-write key for anything
    else; admin routes are marked by the `admin` dependency."""

    def mark(endpoint: F) -> F:
        endpoint.access = level  # type: ignore[attr-defined]
        return endpoint

    return mark


class Services:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings: Settings = rt.settings
        self.metrics = Metrics()
        self.worker = Reembedder(rt)
        # This process in the fleet's heartbeats (proxy/api/lifecycle.py follow_fleet).
        self.member = f"serve {socket.gethostname()} pid {os.getpid()}"
        self.sidecars = SidecarFollower(rt)
        self.control = ControlPlane(rt)
        self.key = admin_key(rt.settings)
        self.keys = Keyring(self.key, rt.settings.server)
        self.history = History()
        self.health = Health(rt.store)
        self.background: set[asyncio.Task[Any]] = set()
        self.canary: Any = None  # the last canary check, per hosted model
        # Texts of the vectors /v1/embeddings returned (memory only, bounded).
        vc = rt.settings.vector_clients
        self.remembered = RememberedTexts(
            vc.remember_texts, vc.remember_ttl_s, vc.remember_max_chars
        )
        self.metrics.watch_remembered(self.remembered.stats)
        # The old -> new query map (proxy/migration/query_map.py), swapped whole when refitted.
        self.query_map: QueryMap | None = None
        self._searcher: Searcher | None = None
        # Switches read from the state store, held through its outage (the replica serves on
        # what it knew, marked degraded: proxy/migration/control.py).
        self._lazy = Every(
            1.0,
            lambda: control_state(rt.state, rt.settings.migration)["lazy"],
            hold_on=(StateUnavailable,),
        )
        # cleared by a finish in this process
        self.retired = Every(1.0, lambda: retired(rt), hold_on=(StateUnavailable,))
        self._figures: Every[dict[str, Any]] = Every(rt.settings.server.metrics_cache_s)
        self._figures_lock = asyncio.Lock()

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
        return bool(self._lazy.get())

    def is_admin(self, request: Request) -> bool:
        return self.keys.grant(presented_key(request.headers.raw)) is Access.ADMIN

    def in_background(self, coro: Any) -> None:
        """Work that must not delay the response (enqueueing hits, shadow comparisons)."""
        t = asyncio.create_task(coro)
        self.background.add(t)
        t.add_done_callback(self._background_done)

    def _background_done(self, t: asyncio.Task[Any]) -> None:
        """Forget a finished background task, its failure retrieved and logged here: left
        unretrieved, asyncio logged "Task exception was never retrieved" with a traceback for
        every search while the state store was down (each search's enqueue of its hits
        failed). Hits not enqueued cost time, never data: the backfill's sweep finds them."""
        self.background.discard(t)
        if t.cancelled() or t.exception() is None:
            return
        e = t.exception()
        level = logging.DEBUG if isinstance(e, StateUnavailable) else logging.WARNING
        log.log(level, "background work after a request failed: %s", e)

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
        # Apps that send vectors: the query map and the texts behind returned vectors.
        out["query_map"] = map_status(self.query_map, self.rt)
        return out

    async def figures(self) -> dict[str, Any]:
        """The full status for /metrics, computed at most once per `server.metrics_cache_s`
        (a count per fingerprint and a facet on each scrape would load the index)."""
        async with self._figures_lock:
            if self._figures.stale():
                return self._figures.put(await self.full_status())
            return self._figures.value  # type: ignore[return-value]


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def admin(request: Request) -> None:
    """Dependency of every admin route (marks it for the Gate, which checks the key before
    the body is read; checked here again so a route can never miss it)."""
    granted = services(request).keys.grant(presented_key(request.headers.raw))
    if granted is not Access.ADMIN:
        raise HTTPException(401 if granted is None else 403, ADMIN_REFUSED)


GUARDED = [Depends(admin)]
Svc = Annotated[Services, Depends(services)]
