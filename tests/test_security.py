"""Security defaults, on a real `crossfade serve` process: admin endpoints refuse missing and
wrong keys, read-write and read-only keys come from the environment and grant what they should,
no key (admin, read-write, read-only or Qdrant's) ever reaches the logs, the proxy binds
127.0.0.1 unless told otherwise and refuses to serve another address without keys, an empty
key is refused at load, and CORS is off unless origins are configured. (Every write route
against every refusal: tests/test_gate.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from proxy.config import ConfigError, Settings
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.helpers import ROOT, ProxyProcess, demo_settings

ADMIN_KEY = "s3cret-admin-key-0123456789"
WRONG_KEY = "wrong-key-9876543210-guess"
QDRANT_KEY = "qdrant-api-key-abcdefghij"
RW_KEYS = ("rw-key-one-0123456789", "rw-key-two-0123456789")
RO_KEYS = ("ro-key-one-0123456789", "ro-key-two-0123456789")
KEYS_ENV = {
    "CROSSFADE_SERVER__API_KEYS": ",".join(RW_KEYS),  # comma-separated
    "CROSSFADE_SERVER__READ_ONLY_API_KEYS": json.dumps(RO_KEYS),  # or a JSON list
}
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
        env={
            "CROSSFADE_SERVER__LOG_LEVEL": "debug",
            "CROSSFADE_INDEXES__OLD__API_KEY": QDRANT_KEY,
            **KEYS_ENV,
        }
    )
    secrets = (ADMIN_KEY, WRONG_KEY, QDRANT_KEY, *RW_KEYS, *RO_KEYS)
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            for method, path, body in ADMIN_ROUTES:
                for headers in (
                    {},
                    {"Authorization": f"Bearer {WRONG_KEY}"},
                    {"api-key": WRONG_KEY},
                    {"X-Key": ADMIN_KEY},
                ):
                    r = c.request(method, path, json=body, headers=headers)
                    assert r.status_code == 401, (method, path, headers)
                    assert not any(k in r.text for k in secrets)
                # Keys of the other kinds are known, but not enough: 403.
                for key in (RW_KEYS[0], RO_KEYS[1]):
                    r = c.request(method, path, json=body, headers={"api-key": key})
                    assert r.status_code == 403, (method, path)
                    assert not any(k in r.text for k in secrets)
            # Each read-write key from the environment writes; each read-only one reads only.
            doc = {"documents": [{"id": "sec-1", "text": "A passage written with a key."}]}
            for key in RW_KEYS:
                r = c.put("/documents", json=doc, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
            for key in RO_KEYS:
                r = c.put("/documents", json=doc, headers={"api-key": key})
                assert r.status_code == 403 and "read-only" in r.json()["error"]
                r = c.post("/search", json={"query": "a passage", "k": 1}, headers={"api-key": key})
                assert r.status_code == 200
            r = c.delete(f"/documents/sec-1?api-key={RW_KEYS[0]}")  # not a place for keys
            assert r.status_code == 401
            assert c.delete("/documents/sec-1", headers={"api-key": RW_KEYS[1]}).is_success
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
    assert "writes need a read-write key (2 configured)" in log
    for secret in secrets:
        assert secret not in log, f"a key reached the log: {secret[:6]}..."


def test_settings_never_print_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROSSFADE_SERVER__API_KEYS")  # the suite's key: env beats the config
    s = demo_settings(
        tmp_path,
        server={"admin_key": ADMIN_KEY, "api_keys": [RW_KEYS[0]], "read_only_api_keys": RO_KEYS},
        indexes={
            "old": {"backend": "qdrant", "url": "http://127.0.0.1:1", "api_key": QDRANT_KEY},
            "new": {"backend": "edge", "path": "new"},
        },
    )
    secrets = (ADMIN_KEY, QDRANT_KEY, RW_KEYS[0], *RO_KEYS)
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert not any(k in text for k in secrets)
    # A config refused for one key never shows the others (nor itself).
    for server in (
        {"api_keys": [RW_KEYS[0], ""]},
        {"api_keys": [RW_KEYS[0], "two words"]},
        {"api_keys": [RW_KEYS[0]], "read_only_api_keys": [RW_KEYS[0]]},
        {"admin_key": RW_KEYS[0], "read_only_api_keys": [RW_KEYS[0]]},
    ):
        with pytest.raises(ConfigError) as refused:
            demo_settings(tmp_path, server=server)
        assert RW_KEYS[0] not in str(refused.value) and "server" in str(refused.value)


def serve(config: Path, *args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess:
    """`crossfade serve` that is expected to refuse to start (it exits before loading models)."""
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve", *args],
        env=merged,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_no_keys_no_serving_beyond_loopback(tmp_path: Path) -> None:
    no_keys = {"CROSSFADE_SERVER__API_KEYS": None}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    exposed = ProxyProcess(tmp_path / "a", admin_key=None, server={"host": "0.0.0.0"})
    r = serve(exposed.config, env=no_keys)
    assert r.returncode == 2, r.stderr
    assert "not a loopback address and no key is configured" in r.stderr
    assert "server.api_keys" in r.stderr  # what to do about it
    # The command line's --host counts as the config's.
    loopback = ProxyProcess(tmp_path / "b", admin_key=None)
    r = serve(loopback.config, "--host", "0.0.0.0", env=no_keys)
    assert r.returncode == 2 and "no key is configured" in r.stderr
    # An empty key is refused when the config loads, with its field's name.
    r = serve(loopback.config, env={"CROSSFADE_SERVER__ADMIN_KEY": ""})
    assert r.returncode == 2 and "server.admin_key" in r.stderr and "empty" in r.stderr
    r = serve(loopback.config, env={"CROSSFADE_SERVER__API_KEYS": f"{RW_KEYS[0]},,x"})
    assert r.returncode == 2 and "server.api_keys" in r.stderr and "empty" in r.stderr
    assert RW_KEYS[0] not in r.stderr


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
        # The configured origin may send a key (a preflight asks for the header first).
        pre = httpx.options(
            p.url + "/documents",
            headers={
                "Origin": "https://search.example",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "api-key, content-type",
            },
        )
        assert pre.status_code == 200 and "api-key" in pre.headers["access-control-allow-headers"]
    finally:
        p.stop()
