"""The admin key: bearer auth for endpoints that change what is served.

With no key configured, a random one is generated once and kept in `<data_dir>/admin.key`
(mode 0600), where the CLI on the same machine finds it. Keys are compared in constant time
and never logged (the config holds them as SecretStr)."""

from __future__ import annotations

import hmac
import os
import secrets

from proxy.config import Settings

KEY_FILE = "admin.key"


def admin_key(settings: Settings) -> str:
    if settings.server.admin_key is not None:
        return settings.server.admin_key.get_secret_value()
    path = settings.data_path(KEY_FILE)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def check_bearer(header: str | None, key: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").encode(), key.encode())
