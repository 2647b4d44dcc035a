"""Shared fixtures: real models (loaded once per session), temp data dirs, a live server."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from proxy.config import Settings, load_settings  # noqa: E402
from proxy.embedding import Embedder, load_embedder  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def demo_settings(data_dir: Path, **overrides: object) -> Settings:
    return load_settings(ROOT / "config" / "demo.yaml", data_dir=str(data_dir), **overrides)


@pytest.fixture(scope="session")
def models() -> dict[str, Embedder]:
    s = demo_settings(Path("/nonexistent"))
    return {"old": load_embedder(s.models.old), "new": load_embedder(s.models.new)}


@pytest.fixture
def runtime(tmp_path: Path, models: dict[str, Embedder]) -> Iterator[Runtime]:
    rt = Runtime(demo_settings(tmp_path), models)
    yield rt
    rt.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn on 127.0.0.1 in a thread, stopped at teardown."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def drain(worker: object, max_steps: int = 200) -> int:
    """Run a Reembedder until the queue is empty and the sweep finds nothing (bounded)."""
    total = 0
    for _ in range(max_steps):
        n = worker.step()  # type: ignore[attr-defined]
        if n == 0 and worker.state.depth()["total"] == 0 and not worker.refill():  # type: ignore[attr-defined]
            return total
        total += n
    raise AssertionError("worker did not finish")
