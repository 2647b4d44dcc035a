"""Keys and the request gate's rules, as Qdrant has them: read-write keys, read-only keys
and the admin key, sent as the `api-key` header or `Authorization: Bearer <key>` (or, from
Chroma clients, `X-Chroma-Token`).

The admin key authorises everything and alone opens the admin endpoints. With none
configured, a random one is generated once and kept in `<data_dir>/admin.key` (mode 0600),
where the CLI on the same machine finds it. Keys are compared in constant time and never
logged (the config holds them as SecretStr; only their kind is ever named).

Also here: whether reads need a key (by default only off loopback), the Host allow-list
(DNS rebinding), and the refusal to serve a non-loopback address without keys."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Iterable
from enum import IntEnum

from proxy.config import ServerConfig, Settings

KEY_FILE = "admin.key"
WILDCARD_HOSTS = ("0.0.0.0", "::", "", "*")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Access(IntEnum):
    """What a route needs, and what a key grants (each level includes those below)."""

    OPEN = 0  # no key: health, readiness, Qdrant's version call, the dashboard page, docs
    READ = 1  # search, scroll, count, retrieve, status (a key only if reads need one)
    WRITE = 2  # anything that changes documents
    ADMIN = 3  # the operator's switches


KIND = {Access.READ: "read-only", Access.WRITE: "read-write", Access.ADMIN: "admin"}


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


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries, as Qdrant reads it: the `api-key` header, else the token
    of `Authorization: Bearer <token>`; else Chroma's `X-Chroma-Token` (chromadb's token auth
    provider sends one of the last two); None if none."""
    api_key = bearer = chroma = None
    for name, value in headers:
        if name == b"api-key" and api_key is None:
            api_key = value.decode("latin-1").strip()
        elif name == b"authorization" and bearer is None:
            text = value.decode("latin-1")
            if text.startswith("Bearer "):
                bearer = text.removeprefix("Bearer ").strip()
        elif name == b"x-chroma-token" and chroma is None:
            chroma = value.decode("latin-1").strip()
    return api_key or bearer or chroma or None


class Keyring:
    """Every configured key with the access it grants."""

    def __init__(self, admin: str, server: ServerConfig) -> None:
        keys = [(Access.ADMIN, admin)]
        keys += [(Access.WRITE, k.get_secret_value()) for k in server.api_keys]
        keys += [(Access.READ, k.get_secret_value()) for k in server.read_only_api_keys]
        self._keys = [(level, key.encode()) for level, key in keys]

    def grant(self, key: str | None) -> Access | None:
        """The access `key` grants; None for no key or one that is not configured. Every
        key is compared (constant time each), whichever matches."""
        if not key:
            return None
        sent, found = key.encode("utf-8", "surrogateescape"), None
        for level, secret in self._keys:
            if hmac.compare_digest(sent, secret) and (found is None or level > found):
                found = level
        return found

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keyring({len(self._keys)} keys)"


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reads_need_key(server: ServerConfig) -> bool:
    if server.reads_require_key is not None:
        return server.reads_require_key
    return not is_loopback(server.host)


def has_keys(server: ServerConfig) -> bool:
    """Keys configured (not the generated admin key: apps would have to be handed it)."""
    return bool(server.api_keys or server.read_only_api_keys or server.admin_key)


def exposure_problem(server: ServerConfig) -> str | None:
    """Why this server must not start: bound beyond loopback with no key configured."""
    if is_loopback(server.host) or has_keys(server):
        return None
    return (
        f"server.host {server.host!r} is not a loopback address and no key is configured: "
        "anyone who reaches the port could read the corpus. Set server.api_keys (read-write) "
        "and/or server.read_only_api_keys, e.g. CROSSFADE_SERVER__API_KEYS=<a long random "
        "key>, or server.admin_key; or bind 127.0.0.1"
    )


def allowed_hosts(server: ServerConfig) -> list[str]:
    if server.allowed_hosts is not None:
        return [h.lower() for h in server.allowed_hosts]
    out = list(LOOPBACK_NAMES)
    host = server.host.strip("[]").lower()
    if host not in WILDCARD_HOSTS and host not in out:
        out.append(host)
    return out


def host_of(header: str) -> str:
    """The host part of a Host header (`[::1]:8000` -> `::1`, `a.example:80` -> `a.example`)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def host_allowed(header: str | None, patterns: list[str]) -> bool:
    if "*" in patterns:
        return True
    if not header:
        return False
    host = host_of(header)
    return any(p == host or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


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
