"""Coverage over time: a bounded ring of samples the dashboard draws.

Fed by a sampler in the server (every `server.history_interval_s`) and by every status
request, so the chart has points whether or not anyone is watching; kept in memory only
(a restart starts a new line: the audit log and the index itself are the durable record)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any


class History:
    def __init__(self, size: int = 720, min_spacing_s: float = 1.0) -> None:
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self.min_spacing_s = min_spacing_s

    def record(self, status: dict[str, Any], now: float | None = None) -> bool:
        """Keep one sample of a `migration_status` dict; closer than `min_spacing_s` to the
        last one, it replaces it (the newest value wins, the ring doesn't fill with noise)."""
        at = time.time() if now is None else now
        new = status["indexes"]["new"]
        sample = {
            "t": round(at, 3),
            "coverage": new["coverage"],
            "with_vector": new["with_vector"],
            "documents": new["documents"],
            "queue": status["queue"]["total"],
            "rate": status["rate_docs_per_s"],
        }
        if self.samples and at - self.samples[-1]["t"] < self.min_spacing_s:
            self.samples[-1] = sample
            return False
        self.samples.append(sample)
        return True

    def since(self, t: float = 0.0) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] > t]
