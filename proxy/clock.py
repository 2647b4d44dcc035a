"""Timestamps as crossfade writes them (payloads, audit, state): UTC ISO 8601, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
