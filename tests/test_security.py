"""Security defaults, on a real `crossfade serve` process: admin endpoints refuse missing and
wrong keys, no key (admin or Qdrant) ever reaches the logs, the proxy binds 127.0.0.1 unless
told otherwise, and CORS is off unless origins are configured."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from proxy.config import Settings
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.conftest import ProxyProcess, demo_settings

ADMIN_KEY = "s3cret-admin-key-0123456789"
WRONG_KEY = "wrong-key-9876543210-guess"
QDRANT_KEY = "qdrant-api-key-abcdefghij"
ADMIN_ROUTES = [
    ("POST", "/admin/mode", {"mode": "old"}),
    ("POST", "/admin/split", {"mode": "new", "percent": 5}),
    ("POST", "/admin/cutover", {"force": True}),
    ("POST", "/admin/rollback", {}),
    ("POST", "/migration/backfill", {"action": "pause"}),
    ("GET", "/admin/routing", None),
    ("GET", "/admin/audit", None),
    ("GET", "/admin/plan", None),
]


def non_loopback_address() -> str | None:
    """An address of this machine other than 127.0.0.1 (none on an isolated box)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.fixture
def proxy(tmp_path: Path, models: dict) -> ProxyProcess:
    p = ProxyProcess(tmp_path, {"lazy": False, "backfill": False}, admin_key=ADMIN_KEY)
    with Runtime(p.settings(), dict(models)) as rt:
        ingest(rt, "old", python_reference()[:12], progress=False)
        start_migration(rt, progress=False)
    return p


def test_admin_keys_checked_and_never_logged(proxy: ProxyProcess) -> None:
    # Most verbose logging, and a Qdrant API key in the environment (unused by the embedded
    # engine, but parsed into the settings like any secret).
    proxy.start(
        env={"CROSSFADE_SERVER__LOG_LEVEL": "debug", "CROSSFADE_INDEXES__OLD__API_KEY": QDRANT_KEY}
    )
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            for method, path, body in ADMIN_ROUTES:
                for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"}, {"X-Key": ADMIN_KEY}):
                    r = c.request(method, path, json=body, headers=headers)
                    assert r.status_code == 401, (method, path, headers)
                    assert ADMIN_KEY not in r.text and WRONG_KEY not in r.text
            # Refused before the body is read: not JSON, or far too large, it's still a 401.
            for body in (b"not json", b"x" * 2_000_000):
                assert c.post("/admin/mode", content=body).status_code == 401
            before = c.get("/admin/routing", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert before.status_code == 200
            good = {"Authorization": f"Bearer {ADMIN_KEY}"}
            assert c.post("/migration/backfill", json={"action": "pause"}, headers=good).is_success
            # A key in a query string or a body is not accepted either, and not echoed.
            r = c.post(f"/admin/rollback?key={ADMIN_KEY}", json={"actor": WRONG_KEY})
            assert r.status_code == 401
            r = c.post("/search", json={"query": ADMIN_KEY, "k": 0})
            assert r.status_code == 422 and ADMIN_KEY not in r.text
            assert c.post("/search", json={"query": "with statement", "k": 2}).status_code == 200
            assert c.get("/admin/routing", headers=good).json() == before.json()
    finally:
        proxy.stop()
    log = proxy.log.read_text()
    assert "GET /admin/routing" in log or "/admin/routing" in log  # debug logs were written
    for secret in (ADMIN_KEY, WRONG_KEY, QDRANT_KEY):
        assert secret not in log, f"a key reached the log: {secret[:6]}..."


def test_settings_never_print_secrets(tmp_path: Path) -> None:
    s = demo_settings(
        tmp_path,
        server={"admin_key": ADMIN_KEY},
        indexes={
            "old": {"backend": "qdrant", "url": "http://127.0.0.1:1", "api_key": QDRANT_KEY},
            "new": {"backend": "edge", "path": "new"},
        },
    )
    for text in (repr(s), str(s), s.model_dump_json()):
        assert ADMIN_KEY not in text and QDRANT_KEY not in text


def test_binds_loopback_and_cors_is_off_by_default(proxy: ProxyProcess) -> None:
    assert Settings.model_fields["server"].default_factory().host == "127.0.0.1"  # type: ignore[misc]
    proxy.start()
    try:
        origin = {"Origin": "http://evil.example"}
        r = httpx.post(proxy.url + "/search", json={"query": "lambda", "k": 1}, headers=origin)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        pre = httpx.options(
            proxy.url + "/search",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in pre.headers
        other = non_loopback_address()
        if other:  # reachable on loopback only
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{other}:{proxy.port}/healthz", timeout=2)
    finally:
        proxy.stop()


def test_cors_allows_only_configured_origins(tmp_path: Path, models: dict) -> None:
    p = ProxyProcess(tmp_path, {"lazy": False}, server={"cors_origins": ["https://search.example"]})
    with Runtime(p.settings(), dict(models)) as rt:
        ingest(rt, "old", python_reference()[:4], progress=False)
        start_migration(rt, progress=False)
    p.start()
    try:
        ok = httpx.get(p.url + "/healthz", headers={"Origin": "https://search.example"})
        assert ok.headers.get("access-control-allow-origin") == "https://search.example"
        bad = httpx.get(p.url + "/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in bad.headers
    finally:
        p.stop()
