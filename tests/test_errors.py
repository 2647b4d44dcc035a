"""The exception tree (proxy/errors.py): every error carries its HTTP status and is rendered
the same way in either shape; the migration headers and the once-a-second cache. Pure: no
server, no model (the HTTP answers themselves are asserted in test_api, test_qdrant_api,
test_gate, test_integrity, test_degraded, ...)."""

from __future__ import annotations

import json

import pytest

from proxy.api.errors import refused
from proxy.api.search import migration_headers
from proxy.config import ConfigError, Mode
from proxy.document import CorpusError
from proxy.errors import CrossfadeError, Invalid
from proxy.every import Every
from proxy.migration.adoption import AdoptionRefused
from proxy.migration.canary import ModelDrift
from proxy.migration.finish import FinishRefused
from proxy.model import ModelUnavailable
from proxy.qdrant_api import Unsupported
from proxy.qdrant_api.answers import refused as qdrant_refused
from proxy.store import FingerprintMismatch, IndexUnavailable
from proxy.store.adopted import InvalidDocId
from proxy.writes import WritePending

# Each error, its status, and the builtin base its callers catch it by (`except ValueError`
# in the CLI and the ingest path, `except RuntimeError` in the CLI and the canary check).
TREE = [
    (CorpusError("x"), 422, ValueError),
    (InvalidDocId("x"), 422, ValueError),
    (FingerprintMismatch("x"), 409, ValueError),
    (ModelDrift("x"), 409, ValueError),
    (Unsupported("x"), 400, ValueError),
    (IndexUnavailable("old", "qdrant at http://h", "refused"), 503, RuntimeError),
    (ModelUnavailable("m", "HTTP 500"), 503, RuntimeError),
    (WritePending(7, ["old"], ["new"], "boom"), 503, RuntimeError),
    (FinishRefused("x"), 409, RuntimeError),
    (AdoptionRefused("x"), 409, RuntimeError),
    (ConfigError("x"), 500, Exception),
]


@pytest.mark.parametrize(("error", "status", "base"), TREE, ids=lambda v: type(v).__name__)
def test_every_error_carries_its_status(error: CrossfadeError, status: int, base: type) -> None:
    assert isinstance(error, CrossfadeError) and isinstance(error, base)
    assert error.status == status


def test_both_shapes_render_status_message_and_retry_after() -> None:
    e = WritePending(7, ["old"], ["new"], "boom", retry_after_s=0.2)
    mine, theirs = refused(e), qdrant_refused(e)
    assert mine.status_code == theirs.status_code == 503
    assert mine.headers["retry-after"] == theirs.headers["retry-after"] == "1"  # at least 1s
    assert json.loads(mine.body) == {"error": str(e)}
    assert json.loads(theirs.body)["status"] == {"error": str(e)}
    # A status given to the instance, and details (crossfade's shape only).
    e2 = Invalid("too many", status=413, problems=[{"field": "body.k"}])
    assert json.loads(refused(e2).body) == {"error": "too many", "problems": [{"field": "body.k"}]}
    assert qdrant_refused(e2).status_code == 413 and "retry-after" not in refused(e2).headers


def test_qdrant_shape_words_errors_as_qdrant_does() -> None:
    down = IndexUnavailable("old", "qdrant at http://h", "connection refused")
    assert json.loads(refused(down).body)["error"] == str(down)
    assert (
        json.loads(qdrant_refused(down).body)["status"]["error"] == f"Service unavailable: {down}"
    )
    bad = qdrant_refused(Unsupported("'order_by' is not supported"))
    assert json.loads(bad.body)["status"]["error"] == "Bad request: 'order_by' is not supported"


def test_migration_headers() -> None:
    assert migration_headers(Mode.FUSED, 3, 0.25) == {
        "X-Crossfade-Mode": "fused",
        "X-Crossfade-Generation": "3",
        "X-Crossfade-Coverage": "0.2500",
    }
    marked = migration_headers(Mode.NEW, 4, 1.0, "old index unreachable")
    assert marked["X-Crossfade-Degraded"] == "old index unreachable"


def test_every_recomputes_once_per_period_and_after_clear() -> None:
    calls = []
    every = Every(3600.0, lambda: calls.append(1) or len(calls))
    assert every.get() == 1 and every.get() == 1 and len(calls) == 1
    every.clear()
    assert every.get() == 2 and not every.stale()
    assert Every(0.0, lambda: 5).stale()  # a period of 0: stale at once
