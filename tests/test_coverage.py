"""Coverage recounts (proxy/search.py): the embedded engine's count holds the GIL, so a costly
recount is spaced by its own cost (COST_RATIO times it), never more often than refresh_s."""

from __future__ import annotations

import asyncio
import time

from proxy.search import Coverage


class Counting:
    """A store whose counts take `cost` seconds each, holding the process like the embedded
    engine's (`blocking` False: like a server's)."""

    def __init__(
        self, cost: float, total: int = 10, migrated: int = 4, blocking: bool = True
    ) -> None:
        self.cost, self.total, self.migrated, self.counts = cost, total, migrated, 0
        self.blocking_count = blocking

    def info(self) -> object:
        return object()

    def count(self, dense_only: bool = False) -> int:
        self.counts += 1
        time.sleep(self.cost)
        return self.migrated if dense_only else self.total


def test_cheap_counts_keep_refresh_s() -> None:
    cov = Coverage(Counting(0.0), refresh_s=0.1)  # type: ignore[arg-type]
    assert cov.recount() == 0.4
    assert cov._counted.seconds == 0.1


def test_a_servers_counts_keep_refresh_s() -> None:
    cov = Coverage(Counting(0.01, blocking=False), refresh_s=0.1)  # type: ignore[arg-type]
    cov.recount()
    assert cov._counted.seconds == 0.1  # a server's count stops nothing in this process


def test_costly_counts_are_spaced_by_their_cost() -> None:
    store = Counting(0.01)
    cov = Coverage(store, refresh_s=0.1)  # type: ignore[arg-type]
    cov.recount()
    assert cov._counted.seconds >= Coverage.COST_RATIO * 0.02  # two counts of 10 ms
    time.sleep(0.15)  # past refresh_s, not past the spacing: the count is not repeated
    assert asyncio.run(cov.get()) == 0.4
    assert store.counts == 2
    store.cost = 0.0
    cov._counted.at = float("-inf")  # stale: recounted, and cheap again
    asyncio.run(cov.get())
    assert store.counts == 4 and cov._counted.seconds == 0.1
