"""Prometheus metrics. One registry per app so tests and replicas in one process don't clash.

Request-path figures are observed as they happen (every HTTP answer is counted by
`RequestCounter`, outermost of the app's middleware, so refusals made before routing count
too); migration figures (coverage, queue, rate, fingerprints, cutover state) are read from
the migration status at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Error kinds by HTTP status: a small fixed set, so the label's cardinality stays bounded.
ERROR_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "refused",
    413: "too_large",
    415: "not_json",
    422: "invalid",
    503: "unavailable",
}


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
        self.spend_tokens = Gauge(
            "crossfade_migration_tokens",
            "API tokens the migration's re-embedding was billed",
            registry=r,
        )
        self.spend = Gauge(
            "crossfade_migration_spend", "The migration's API spend (plan price)", registry=r
        )
        self.spend_capped = Gauge(
            "crossfade_migration_spend_capped",
            "1 while re-embedding is stopped at migration.max_spend",
            registry=r,
        )
        self.model_drift = Gauge(
            "crossfade_model_drift",
            "1 if a hosted model's canary drifted (vector writes naming it refused)",
            ["side", "model"],
            registry=r,
        )
        self.journal_pending = Gauge(
            "crossfade_write_journal_pending",
            "Document write batches not yet in every index (retried until they are)",
            registry=r,
        )
        self.journal_retrying = Gauge(
            "crossfade_write_journal_retrying",
            "Of those, batches an index refused (retried with backoff)",
            registry=r,
        )
        self.journal_age = Gauge(
            "crossfade_write_journal_oldest_seconds",
            "Age of the oldest batch not yet in every index (0: none)",
            registry=r,
        )
        self.journal_attempts = Gauge(
            "crossfade_write_journal_attempts",
            "Failed attempts of the batch retried longest",
            registry=r,
        )
        # Counter names get `_total` from the client: crossfade_http_requests_total, ...
        self.requests = Counter(
            "crossfade_http_requests",
            "HTTP requests by route template, serving mode (searches; 'none' otherwise) and "
            "status code",
            ["route", "mode", "status"],
            registry=r,
        )
        self.errors = Counter(
            "crossfade_http_errors", "HTTP error answers by kind", ["kind"], registry=r
        )

    def watch_remembered(self, stats: Callable[[], dict[str, Any]]) -> None:
        """The remembered texts of /v1/embeddings (proxy/remembered.py), read at each scrape."""
        self.registry.register(RememberedCollector(stats))

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
        spend = status["spend"]
        self.spend_tokens.set(spend["tokens"])
        self.spend.set(spend["cost"])
        self.spend_capped.set(1 if spend["capped"] else 0)
        self.model_drift.clear()
        for side, m in status["models"].items():
            if m["kind"] == "openai":
                drifted = side in status["model_drift"]
                self.model_drift.labels(side, m.get("model") or "").set(1 if drifted else 0)
        journal = status["write_journal"]
        self.journal_pending.set(journal["pending"])
        self.journal_retrying.set(journal["retrying"])
        self.journal_age.set(journal["oldest_age_s"])
        self.journal_attempts.set(journal["max_attempts"])
        routing = status["routing"]
        self.generation.set(routing["generation"])
        for m in ("old", "shadow", "fused", "new"):
            self.mode.labels(m).set(1 if routing["mode"] == m else 0)
        self.split.set(routing["split_percent"])


class RememberedCollector(Collector):
    """Entries held and recalls (hit: a vector crossfade returned came back and its text was
    known; miss: it was not), from the store's own counts at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        yield GaugeMetricFamily(
            "crossfade_remembered_texts",
            "Vectors returned by /v1/embeddings whose text is remembered",
            value=s["entries"],
        )
        yield GaugeMetricFamily(
            "crossfade_remembered_bytes",
            "Their approximate memory (texts and per-entry overhead)",
            value=s["approx_bytes"],
        )
        recalls = CounterMetricFamily(
            "crossfade_remembered_recalls",
            "Vectors looked up among those /v1/embeddings returned, by result",
            labels=["result"],
        )
        recalls.add_metric(["hit"], s["hits"])
        recalls.add_metric(["miss"], s["misses"])
        yield recalls


def error_kind(status: int) -> str | None:
    """The kind of an error answer (None: not an error). Pure."""
    if status < 400:
        return None
    return ERROR_KINDS.get(status, "internal" if status >= 500 else "client_error")


class RequestCounter:
    """ASGI middleware counting every answer: by route template (never the raw path, whose
    ids would make a series per document), serving mode (the X-Crossfade-Mode header) and
    status; errors by kind. An exception that escapes the app counts as a 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_of: Callable[[Scope], str]) -> None:
        self.app, self.metrics, self.route_of = app, metrics, route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen: dict[str, Any] = {"status": 500, "mode": "none"}

        async def sending(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                seen["status"] = msg["status"]
                for k, v in msg.get("headers") or []:
                    if k.lower() == b"x-crossfade-mode":
                        seen["mode"] = v.decode("latin-1")
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        finally:
            status = int(seen["status"])
            self.metrics.requests.labels(self.route_of(scope), seen["mode"], str(status)).inc()
            kind = error_kind(status)
            if kind:
                self.metrics.errors.labels(kind).inc()
