"""Prometheus metrics. One registry per app so tests and replicas in one process don't clash.

Request-path figures are observed as they happen; migration figures (coverage, queue, rate,
fingerprints, cutover state) are read from the migration status at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.search_latency = Histogram(
            "crossfade_search_seconds",
            "Search latency by serving mode",
            ["mode"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        ratio = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
        self.shadow_overlap = Histogram(
            "crossfade_shadow_overlap_at_10", "Old vs new top-10 overlap", registry=r, buckets=ratio
        )
        self.shadow_rbo = Histogram(
            "crossfade_shadow_rbo", "Old vs new rank-biased overlap", registry=r, buckets=ratio
        )
        self.coverage = Gauge(
            "crossfade_coverage_ratio", "Share of documents with a new-model vector", registry=r
        )
        self.queue = Gauge("crossfade_queue_depth", "Re-embed queue", ["priority"], registry=r)
        self.rate = Gauge("crossfade_reembed_docs_per_second", "Re-embed rate", registry=r)
        self.fingerprints = Gauge(
            "crossfade_index_vectors",
            "Vectors per index and model fingerprint",
            ["index", "fingerprint"],
            registry=r,
        )
        self.generation = Gauge(
            "crossfade_routing_generation", "Serving pointer generation", registry=r
        )
        self.mode = Gauge(
            "crossfade_routing_mode", "1 for the base serving mode", ["mode"], registry=r
        )
        self.split = Gauge("crossfade_split_percent", "Share routed to the split mode", registry=r)
        self.index_up = Gauge(
            "crossfade_index_up", "1 if the index answered the last status", ["index"], registry=r
        )

    def update(self, status: dict[str, Any]) -> None:
        coverage = status["indexes"]["new"]["coverage"]
        if coverage is not None:  # None: the new index is unreachable, keep the last value
            self.coverage.set(coverage)
        for side, ix in status["indexes"].items():
            self.index_up.labels(side).set(0 if ix.get("reachable") is False else 1)
        for prio in ("hits", "backfill"):
            self.queue.labels(prio).set(status["queue"][prio])
        self.rate.set(status["rate_docs_per_s"])
        self.fingerprints.clear()
        for side, ix in status["indexes"].items():
            for fp, n in ix["fingerprints"].items():
                self.fingerprints.labels(side, fp).set(n)
        routing = status["routing"]
        self.generation.set(routing["generation"])
        for m in ("old", "shadow", "fused", "new"):
            self.mode.labels(m).set(1 if routing["mode"] == m else 0)
        self.split.set(routing["split_percent"])
