"""`Every`: a value recomputed at most once per so many seconds, not per request. A leaf: it
imports nothing from proxy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Every(Generic[T]):
    """A value recomputed at most once per `seconds` (not per request): a persisted switch,
    the figures behind /metrics, the drift alarms every vector write asks for. `get` computes
    it with `compute` when stale; a caller with its own way of computing it (off the event
    loop, under a lock) asks `stale` and gives the value to `put`."""

    def __init__(
        self,
        seconds: float,
        compute: Callable[[], T] | None = None,
        hold_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        """`hold_on`: errors of `compute` on which `get` keeps the last value (tried again
        after `seconds`), e.g. a shared state store that went away; before any value, they
        are raised."""
        self.seconds, self.compute, self.hold_on = seconds, compute, hold_on
        self.at, self.value = float("-inf"), None

    def stale(self) -> bool:
        return time.monotonic() - self.at >= self.seconds

    def put(self, value: T) -> T:
        self.value, self.at = value, time.monotonic()
        return value

    def get(self) -> T:
        if self.stale():
            assert self.compute is not None
            try:
                return self.put(self.compute())
            except self.hold_on:
                if self.at == float("-inf"):
                    raise
                return self.put(self.value)  # type: ignore[arg-type]
        return self.value  # type: ignore[return-value]

    def clear(self) -> None:
        """Stale from now on: the next `get` recomputes it (e.g. after a change made here)."""
        self.at = float("-inf")
