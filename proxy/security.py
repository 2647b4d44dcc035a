"""The admin key: bearer auth for endpoints that change what is served.

With no key configured, a random one is generated once and kept in `<data_dir>/admin.key`
(mode 0600), where the CLI on the same machine finds it. Keys are compared in constant time
and never logged (the config holds them as SecretStr)."""

from __future__ import annotations

import hmac
import logging
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


# Query parameters the API defines; any other value in a logged URL is replaced, so a key a
# client puts in a query string (`?key=...`, `?token=...`) never reaches the access log.
PLAIN_PARAMS = frozenset({"since", "n", "sample"})


def redact_query(path: str) -> str:
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        parts.append(pair if name in PLAIN_PARAMS or not eq else f"{name}=***")
    return base + "?" + "&".join(parts)


class RedactQueryStrings(logging.Filter):
    """On uvicorn's access logger: the path argument of each record, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def redact_access_log() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQueryStrings) for f in logger.filters):
        logger.addFilter(RedactQueryStrings())
