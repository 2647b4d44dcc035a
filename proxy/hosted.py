"""Hosted embedding models: one adapter for every server that speaks `/v1/embeddings`
(OpenAI, Azure, HuggingFace TEI, Infinity, Ollama, vLLM), through the official `openai` async
client, behind the same provider protocol as the local models (proxy/model.py).

One instance serves both the query path and the re-embed worker. Its calls run on an event
loop of its own (a daemon thread), so callers on any thread get plain blocking methods, and
the worker's concurrent calls share one connection pool, one concurrency bound
(`max_concurrent_requests`) and one rate limiter (`requests_per_minute`, `tokens_per_minute`).

Documents: a request answered 429 or 5xx, or lost (connection, timeout), is retried with
exponential backoff and jitter, honouring `Retry-After`; after `max_retries` it fails with
`ModelUnavailable` and the caller keeps its documents queued. Queries: one try within
`query_timeout_s`; a failure is served around (proxy/availability.py), never waited out.

The model's identity: provider URL, model name and dimensions in the fingerprint; whether the
provider still answers the same vectors under that name is the canary's job
(proxy/migration/canary.py). The API key is read from the config's secret or the environment
and is never printed: neither the fingerprint nor any message carries it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from proxy.config import ModelConfig
from proxy.model import Embedded, ModelUnavailable, count_tokens, make_fingerprint

log = logging.getLogger("crossfade.hosted")
MAX_BACKOFF_S = 30.0


class RateLimiter:
    """Requests and tokens per minute, held by pacing (virtual scheduling): each request gets
    the earliest start at which both limits still hold, so over any window of T seconds at
    most limit x T/60 (+ one request) go out, with no burst at start. A request's tokens are
    estimated before it is sent and corrected (`settle`) from the usage the server reports,
    which keeps the long-run rate exact. Not thread-safe: used on the adapter's loop only."""

    def __init__(self, rpm: float, tpm: float, clock: Callable[[], float] = time.monotonic):
        self.rpm, self.tpm, self.clock = rpm, tpm, clock
        self._next_request = float("-inf")
        self._next_token = float("-inf")

    def reserve(self, tokens: float) -> float:
        """Book a request of `tokens`; returns the seconds to wait before sending it."""
        now = self.clock()
        start = now
        if self.rpm:
            start = max(start, self._next_request)
            self._next_request = start + 60.0 / self.rpm
        if self.tpm:
            start = max(start, self._next_token)
            self._next_token = start + tokens * 60.0 / self.tpm
        return start - now

    def settle(self, estimated: float, actual: float) -> None:
        """The request's real token count is known: move the schedule by the difference."""
        if self.tpm:
            self._next_token += (actual - estimated) * 60.0 / self.tpm

    async def acquire(self, tokens: float) -> None:
        delay = self.reserve(tokens)
        if delay > 0:
            await asyncio.sleep(delay)


def retry_after_s(headers: Any) -> float | None:
    """Seconds a `Retry-After` (or `retry-after-ms`) header asks to wait, or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def backoff_s(
    attempt: int, base: float, retry_after: float | None, max_retry_after: float
) -> float:
    """Wait before retry number `attempt` (0 = the first): what the server asked for, at most
    `max_retry_after` (plus a little jitter, so requests told the same don't return
    together), else exponential with full jitter in the upper half, at most MAX_BACKOFF_S."""
    if retry_after is not None:
        return min(retry_after, max_retry_after) * random.uniform(1.0, 1.1)
    return min(MAX_BACKOFF_S, base * 2**attempt) * random.uniform(0.5, 1.0)


class OpenAIEmbedder:
    hosted = True

    def __init__(self, cfg: ModelConfig) -> None:
        import openai

        self.cfg = cfg
        self.model_name = str(cfg.model)
        self.base_url = cfg.base_url.rstrip("/")
        self.request_batch = cfg.batch_size
        self.max_in_flight = cfg.max_concurrent_requests
        self.tokenizer = None
        if cfg.tokenizer:
            from tokenizers import Tokenizer

            from proxy.config import resolve_path

            self.tokenizer = Tokenizer.from_file(resolve_path(cfg.tokenizer))
        key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get(cfg.api_key_env)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"hosted-{self.model_name}", daemon=True
        )
        self._thread.start()
        # A server without auth (Infinity, TEI, Ollama) takes any key; the client wants one.
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=key or "unused", max_retries=0, timeout=cfg.timeout_s
        )
        self._errors = (openai.APIConnectionError, openai.APIStatusError)  # timeouts included
        self._sem: asyncio.Semaphore | None = None
        self.limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
        self.tokens_per_char = 0.25  # learnt from the server's usage (Infinity counts chars)
        # Counters (read by status, metrics and the load test).
        self.requests = self.retries = self.failures = self.tokens = 0
        dim = cfg.dimensions or int(self.embed_documents(["dimension probe"]).shape[1])
        ident = f"openai:{self.base_url}|{self.model_name}|{cfg.dimensions or 'native'}"
        self.fingerprint = make_fingerprint(
            cfg, hashlib.sha256(ident.encode()).hexdigest(), dim, self.model_name
        )

    def describe(self) -> dict[str, Any]:
        """The provider, as status and the canary name it (never the key)."""
        return {
            "base_url": self.base_url,
            "model": self.model_name,
            "dimensions": self.cfg.dimensions,
        }

    def configure_thread(self) -> None:
        """Nothing to pin: inference happens at the provider."""

    # -- the blocking face (any thread) ---------------------------------------------------

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        t = self.cfg.query_timeout_s
        batches = self._batches(texts, self.cfg.query_prefix)
        return self._wait(self._embed_all(batches, t, retries=0, query=True), t + 1.0).vectors

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_billed(texts).vectors

    def embed_billed(self, texts: Sequence[str]) -> Embedded:
        batches = self._batches(texts, self.cfg.document_prefix)
        return self._wait(self._embed_all(batches, self.cfg.timeout_s, self.cfg.max_retries))

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # -- on the adapter's loop --------------------------------------------------------------

    def _batches(self, texts: Sequence[str], prefix: str) -> list[list[str]]:
        n = self.request_batch
        return [[prefix + t for t in texts[i : i + n]] for i in range(0, len(texts), n)]

    def _wait(self, coro: Any, timeout: float | None = None) -> Embedded:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ModelUnavailable(self.model_name, f"no answer within {timeout:g}s") from None

    async def _embed_all(
        self, batches: list[list[str]], timeout: float, retries: int, query: bool = False
    ) -> Embedded:
        if not batches:
            fp = getattr(self, "fingerprint", None)
            return Embedded(np.zeros((0, fp.dim if fp else 0), dtype=np.float32), 0)
        done = await asyncio.gather(*(self._request(b, timeout, retries, query) for b in batches))
        return Embedded(np.concatenate([d.vectors for d in done]), sum(d.tokens for d in done))

    def _estimate(self, texts: list[str]) -> float:
        return max(1.0, sum(len(t) for t in texts) * self.tokens_per_char)

    async def _request(
        self, texts: list[str], timeout: float, retries: int, query: bool = False
    ) -> Embedded:
        """One API request, retried. A query goes first: it takes no slot of the concurrency
        bound and does not wait for the rate limiter, whose schedule it only pushes back (the
        documents behind it wait instead)."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.cfg.max_concurrent_requests)
        estimate = self._estimate(texts)
        for attempt in range(retries + 1):
            async with contextlib.nullcontext() if query else self._sem:
                if query:
                    self.limiter.reserve(estimate)
                else:
                    await self.limiter.acquire(estimate)
                self.requests += 1
                try:
                    resp = await self._client.embeddings.create(
                        input=texts, model=self.model_name, timeout=timeout, **self._dims()
                    )
                except self._errors as e:
                    self.limiter.settle(estimate, 0)  # not billed
                    status = getattr(e, "status_code", None)
                    why = f"HTTP {status}" if status else type(e).__name__
                    # Retried: rate limited, server errors, lost requests. Not: 4xx (a bad
                    # request or key is the same on the next try).
                    if status is not None and status != 429 and status < 500:
                        self.failures += 1
                        raise ModelUnavailable(self.model_name, f"{why}: {_brief(e)}") from None
                    if attempt == retries:
                        self.failures += 1
                        tries = f" after {attempt + 1} tries" if attempt else ""
                        raise ModelUnavailable(self.model_name, f"{why}{tries}") from None
                    wait = backoff_s(
                        attempt,
                        self.cfg.backoff_s,
                        retry_after_s(getattr(e, "headers", None)),
                        self.cfg.max_retry_after_s,
                    )
                    log.info("%s: %s, retry in %.2fs", self.model_name, why, wait)
                    self.retries += 1
                else:
                    return self._result(resp, texts, estimate)
            await asyncio.sleep(wait)  # outside the concurrency bound
        raise AssertionError("unreachable: the last try returns or raises")

    def _dims(self) -> dict[str, int]:
        return {"dimensions": self.cfg.dimensions} if self.cfg.dimensions else {}

    def _result(self, resp: Any, texts: list[str], estimate: float) -> Embedded:
        data = sorted(resp.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise ModelUnavailable(
                self.model_name, f"{len(data)} embeddings for {len(texts)} texts"
            )
        vecs = np.asarray([d.embedding for d in data], dtype=np.float32)
        if self.cfg.dimensions and vecs.shape[1] > self.cfg.dimensions:
            vecs = vecs[:, : self.cfg.dimensions]  # a server that ignores `dimensions`
        if self.cfg.normalize:  # also after truncation (Matryoshka): a cut vector is not unit
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        usage = getattr(resp, "usage", None)
        tokens = int(getattr(usage, "prompt_tokens", 0) or getattr(usage, "total_tokens", 0) or 0)
        if tokens <= 0:
            tokens = sum(count_tokens(self, texts))
        chars = sum(len(t) for t in texts)
        if chars:
            self.tokens_per_char = tokens / chars
        self.limiter.settle(estimate, tokens)
        self.tokens += tokens
        return Embedded(vecs, tokens)


def _brief(e: Exception) -> str:
    """An API error's message, short (it never holds the key: the client does not echo it)."""
    msg = getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split())[:200]
