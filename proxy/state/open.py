"""The state store a config names: PostgreSQL (`state.url`, a fleet) or files under data_dir."""

from __future__ import annotations

from proxy.config import Settings
from proxy.state import StateStore


def open_state(settings: Settings) -> StateStore:
    w = settings.writes
    if settings.state.url is not None:
        from proxy.state.postgres import PostgresState

        return PostgresState(
            settings.state.url.get_secret_value(),
            retry_base_s=w.retry_base_s,
            retry_max_s=w.retry_max_s,
            connect_timeout_s=settings.state.connect_timeout_s,
            pool_size=settings.state.pool_size,
        )
    from proxy.state.sqlite import SqliteState

    return SqliteState(settings.data_dir, w.retry_base_s, w.retry_max_s)
