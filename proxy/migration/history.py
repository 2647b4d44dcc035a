"""Coverage over time: a bounded ring of samples the dashboard draws.

Fed by a sampler in the server (every `server.history_interval_s`, from the searcher's own
coverage counts: two counts, not a full status with its fingerprint facets, which measured
~7% of throughput under load when taken every 5 s) and by every status request, so the chart
has points whether or not anyone is watching; kept in memory only (a restart starts a new
line: the audit log and the index itself are the durable record)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any


class History:
    def __init__(self, size: int = 720, min_spacing_s: float = 1.0) -> None:
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self.min_spacing_s = min_spacing_s

    def record(
        self,
        coverage: float,
        with_vector: int,
        documents: int,
        queue: int,
        rate: float,
        now: float | None = None,
    ) -> bool:
        """Keep one sample; closer than `min_spacing_s` to the last one, it replaces it (the
        newest value wins, the ring doesn't fill with noise)."""
        at = time.time() if now is None else now
        sample = {
            "t": round(at, 3),
            "coverage": coverage,
            "with_vector": with_vector,
            "documents": documents,
            "queue": queue,
            "rate": rate,
        }
        if self.samples and at - self.samples[-1]["t"] < self.min_spacing_s:
            self.samples[-1] = sample
            return False
        self.samples.append(sample)
        return True

    def record_status(self, status: dict[str, Any]) -> bool:
        """A sample from a `migration_status` dict (already computed for a status call)."""
        new = status["indexes"]["new"]
        if new.get("coverage") is None:  # the new index could not be counted
            return False
        return self.record(
            new["coverage"],
            new["with_vector"],
            new["documents"],
            status["queue"]["total"],
            status["rate_docs_per_s"],
        )

    def since(self, t: float = 0.0) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] > t]
