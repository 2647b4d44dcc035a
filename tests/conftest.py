"""Fixtures: real models (loaded once per session), a runtime over a temp data dir, the
session's Infinity server and a fault proxy in front of it, the session's Chroma server.
Helpers are in tests/helpers.py."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.servers import start_postgres
from proxy.config import ModelConfig
from proxy.embedding import load_embedder
from proxy.model import Embedder
from proxy.runtime import Runtime
from tests.helpers import MPNET, MPNET_PATH, CachedDocuments, demo_settings


@pytest.fixture(scope="session")
def models() -> dict[str, Embedder]:
    s = demo_settings(Path("/nonexistent"))
    return {"old": load_embedder(s.models.old), "new": load_embedder(s.models.new)}


@pytest.fixture(scope="session")
def cached_models(models: dict[str, Embedder]) -> dict[str, Embedder]:
    """`models`, the new one embedding each document text once for the session: many tests
    backfill the same passages (tests that measure or compare the model itself use `models`)."""
    return {**models, "new": CachedDocuments(models["new"])}


@pytest.fixture(scope="session")
def mpnet() -> Embedder:
    """all-mpnet-base-v2 (768-d), the seeds' new model: slow on CPU, so tests embed short
    texts with it, and few."""
    if not Path(MPNET_PATH, "modules.json").exists():
        pytest.skip("all-mpnet-base-v2 is not installed: run `make mpnet` (part of `make test`)")
    return load_embedder(ModelConfig(**MPNET))


@pytest.fixture
def runtime(tmp_path: Path, models: dict[str, Embedder]) -> Iterator[Runtime]:
    rt = Runtime(demo_settings(tmp_path), models)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def infinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Infinity serving all-MiniLM-L6-v2 on 127.0.0.1 for the session (`make infinity`
    installs it; without it the hosted-model tests are skipped, saying so)."""
    from loadtest.servers import Infinity, infinity_installed

    if not infinity_installed():
        pytest.skip("Infinity is not installed: run `make infinity` (part of `make test`)")
    server = Infinity(tmp_path_factory.mktemp("infinity") / "infinity.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Chroma server for the session: `chroma run` (the Rust server in chromadb's
    wheel, a dependency of crossfade) on 127.0.0.1; each test names collections of its own."""
    from loadtest.servers import Chroma

    server = Chroma(tmp_path_factory.mktemp("chroma") / "data").start()
    yield server
    server.stop()


def pg_home() -> Iterator[Path]:
    """A directory for a PostgreSQL's data, outside pytest's temp tree: PostgreSQL runs as
    another user (pgserver's, as root), and a pytest session starting beside this one resets
    /tmp/pytest-of-<user> to mode 700, which cut a running server off its own files."""
    path = Path(tempfile.mkdtemp(prefix="crossfade-pg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL 16 for the session (pgserver's binaries, a dev dependency), on a Unix
    socket in a temp dir: yields its URI (`postgresql://postgres:@/postgres?host=DIR`)."""
    for home in pg_home():
        server = start_postgres(home / "data")
        yield server.get_uri()
        server.cleanup()


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data directory for a test's own PostgreSQL (see `pg_home`)."""
    for home in pg_home():
        yield home / "data"


@pytest.fixture
def pg_url(postgres: str) -> str:
    """A database of its own for one test, on the session's PostgreSQL: its URI."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    assert "/postgres?" in postgres  # pgserver: postgresql://postgres:@/postgres?host=DIR
    return postgres.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture
def fault_proxy(infinity: Any) -> Iterator[Any]:
    """A fault-injecting reverse proxy in front of the session's Infinity."""
    from loadtest.servers import FaultProxy

    proxy = FaultProxy(infinity.url).start()
    yield proxy
    proxy.stop()
