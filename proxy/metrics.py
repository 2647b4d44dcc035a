"""Prometheus metrics. One registry per app so tests and replicas in one process don't clash."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.search_latency = Histogram(
            "crossfade_search_seconds",
            "Search latency by serving mode",
            ["mode"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.requests = Counter(
            "crossfade_requests",
            "Requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.coverage = Gauge(
            "crossfade_coverage_ratio",
            "Share of documents with a new-model vector",
            registry=self.registry,
        )
