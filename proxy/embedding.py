"""Embedding models: loaders, local runtimes, the query-vector LRU and the on-disk document cache.

A model's identity is its fingerprint (weights hash, dimension, distance, normalisation,
prefixes), never its name: two models with the same name and dimension but different weights
must not share an index.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from proxy.config import ModelConfig, resolve_path
from proxy.document import text_sha256
from proxy.model import Embedded, Embedder, Fingerprint, make_fingerprint

log = logging.getLogger("crossfade")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt")


def _hash_weights(path: Path) -> str:
    """sha256 over the weight files (not configs), so a re-download with other weights shows."""
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    )
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {path}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class _BaseEmbedder:
    """Shared prefixing, batching and normalisation; subclasses implement `_encode`."""

    fingerprint: Fingerprint
    hosted = False
    max_in_flight = 1

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.request_batch = cfg.batch_size

    def embed_billed(self, texts: Sequence[str]) -> Embedded:
        return Embedded(self.embed_documents(texts), 0)

    def configure_thread(self) -> None:
        """Apply per-thread settings on a thread that will run this model (see torch below)."""

    def _encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _run(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.fingerprint.dim), dtype=np.float32)
        # Length-bucketed: batches of similar lengths pad only to their own longest text,
        # not every batch to the longest of a random draw (max_length for long passages).
        order = np.argsort([len(t) for t in texts], kind="stable")
        vecs = np.zeros((len(texts), self.fingerprint.dim), dtype=np.float32)
        for i in range(0, len(texts), self.cfg.batch_size):
            idx = order[i : i + self.cfg.batch_size]
            vecs[idx] = self._encode([prefix + texts[j] for j in idx])
        if self.cfg.normalize:
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, self.cfg.query_prefix)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, self.cfg.document_prefix)

    def _make_fingerprint(self, weights: str, dim: int, default_name: str) -> Fingerprint:
        return make_fingerprint(self.cfg, weights, dim, default_name)


def _st_identity(cfg: ModelConfig) -> tuple[Path, str, str]:
    """A sentence-transformers model's directory, weights digest and default name: the same
    for every runtime that serves its weights unchanged (torch, the fp32 ONNX export)."""
    location = resolve_path(cfg.path or "")
    path = Path(location)
    weights = _hash_weights(path) if path.exists() else f"name:{cfg.path}"
    return path, weights, path.name if path.name != "model" else path.parent.name


class SentenceTransformerEmbedder(_BaseEmbedder):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        from sentence_transformers import SentenceTransformer

        self.threads: int | None = None
        self.configure_thread()
        path, weights, default_name = _st_identity(cfg)
        self.model = SentenceTransformer(str(path) if path.exists() else cfg.path, device="cpu")
        self.model.max_seq_length = cfg.max_length
        dim = int(self.model.get_embedding_dimension())
        self.fingerprint = self._make_fingerprint(weights, dim, default_name)

    def configure_thread(self) -> None:
        # torch keeps its thread count per calling thread (OpenMP), but a thread that has not
        # set one takes the last value set anywhere in the process (the re-embed worker sets
        # 1 on its own thread): pin it on every thread that runs this model, to the configured
        # count or the process default read when the model was loaded.
        import torch

        if self.threads is None:
            self.threads = self.cfg.threads or torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=False
        )


class OnnxEmbedder(_BaseEmbedder):
    """An ONNX graph + tokenizer.json. Its output is the sentence embedding, or per-token
    states (batch, sequence, dim) that are mean-pooled over the real tokens here.

    Intra-op threads: `threads` (0 = ONNX Runtime's default, one per core). With 1 the graph
    runs on the calling thread itself, so the re-embed worker's low CPU priority applies to
    it and two models beside each other take one core each."""

    def __init__(
        self,
        cfg: ModelConfig,
        graph: str | Path | None = None,
        tokenizer: str | None = None,
        identity: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(cfg)
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(graph or resolve_path(cfg.path or ""))
        opts = ort.SessionOptions()
        if cfg.threads:
            opts.intra_op_num_threads = cfg.threads
            opts.inter_op_num_threads = 1
        # Threads that spin between runs take the core a query or the other model needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(tokenizer or resolve_path(cfg.tokenizer or ""))
        self.tokenizer.enable_truncation(max_length=cfg.max_length)
        self.tokenizer.enable_padding()
        self.input_names = {i.name for i in self.session.get_inputs()}
        names = [o.name for o in self.session.get_outputs()]
        output = cfg.output if graph is None else None
        if output is None and graph is None:
            raise ValueError(f"ONNX model {path}: set 'output' to one of {names}")
        if output is not None and output not in names:
            raise ValueError(f"ONNX model {path} has no output {output!r}; outputs: {names}")
        self.output = output or names[0]
        dim = self._encode(["dimension probe"]).shape[1]
        weights, default_name = identity or (_hash_weights(path), path.stem)
        self.fingerprint = self._make_fingerprint(weights, int(dim), default_name)

    def _encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        (out,) = self.session.run([self.output], feeds)
        if out.ndim == 3:  # token states: mean over real tokens (sentence-transformers' pooling)
            m = mask[..., None].astype(out.dtype)
            out = (out * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return out  # type: ignore[no-any-return]


def _onnx_runtime(cfg: ModelConfig, runtime: str, cache_dir: Path) -> OnnxEmbedder:
    """A sentence-transformers model served by ONNX Runtime: `onnx` the checked fp32 export
    (the same fingerprint as torch), `onnx-int8` the configured int8 file (its own)."""
    from proxy.onnx_export import cosines, exported_graph

    path, weights, default_name = _st_identity(cfg)
    tokenizer = str(path / "tokenizer.json")
    if runtime == "onnx-int8":
        int8 = Path(resolve_path(cfg.int8_path or ""))
        # Its own name too, so the fingerprint says what it is wherever it is shown.
        named = cfg.model_copy(update={"name": f"{cfg.name or default_name}-int8"})
        return OnnxEmbedder(named, int8, tokenizer, identity=(_hash_weights(int8), default_name))

    def check(graph: Path, texts: Sequence[str]) -> np.ndarray:
        probe = OnnxEmbedder(cfg, graph, tokenizer, identity=(weights, default_name))
        torch_model = SentenceTransformerEmbedder(cfg)
        return cosines(probe.embed_documents(texts), torch_model.embed_documents(texts))

    graph, _ = exported_graph(path, weights, cache_dir / "onnx", check)
    return OnnxEmbedder(cfg, graph, tokenizer, identity=(weights, default_name))


def default_model_cache() -> Path:
    """Where exported graphs go when no data dir is given (tools, tests)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crossfade"


def load_embedder(
    cfg: ModelConfig, cache_dir: Path | None = None, runtime: str | None = None
) -> Embedder:
    """The model of `cfg`, run by `runtime` (default: its configured one); an ONNX export is
    cached under `cache_dir` (a deployment passes its data dir)."""
    runtime = runtime or cfg.runtime
    try:
        if cfg.kind == "openai":
            from proxy.hosted import OpenAIEmbedder

            return OpenAIEmbedder(cfg)
        if cfg.kind == "onnx":
            return OnnxEmbedder(cfg)
        if runtime != "torch":
            return _onnx_runtime(cfg, runtime, cache_dir or default_model_cache())
        return SentenceTransformerEmbedder(cfg)
    except Exception as e:  # a model that cannot load must stop start-up with its path named
        where = f"{cfg.model!r} at {cfg.base_url}" if cfg.kind == "openai" else repr(cfg.path)
        raise RuntimeError(f"cannot load {cfg.kind} model {where} ({runtime}): {e}") from e


def query_loss(documents: Embedder, queries: Embedder) -> float:
    """Quality loss of encoding queries with `queries` for an index of `documents`' vectors:
    1 - the lowest cosine between the two on the probe texts (0 for the same model)."""
    from proxy.onnx_export import PROBE_TEXTS, cosines

    texts = list(PROBE_TEXTS)
    return float(1.0 - cosines(queries.embed_queries(texts), documents.embed_queries(texts)).min())


def load_query_embedder(cfg: ModelConfig, documents: Embedder, cache_dir: Path) -> Embedder:
    """The query encoder of the index `documents` writes: that model itself, or
    `query_runtime` if set; one of another fingerprint (int8 for an fp32-bound index) only
    within `query_tolerance`, measured now, else start-up stops."""
    if cfg.query_runtime is None or cfg.query_runtime == cfg.runtime:
        return documents
    queries = load_embedder(cfg, cache_dir, cfg.query_runtime)
    if queries.fingerprint.id == documents.fingerprint.id:
        return queries
    loss = query_loss(documents, queries)
    if loss > cfg.query_tolerance:
        raise RuntimeError(
            f"query_runtime {cfg.query_runtime!r} ({queries.fingerprint.id}) loses {loss:.5f} "
            f"against the index's model {documents.fingerprint.id} (1 - lowest cosine on the "
            f"probe texts), over query_tolerance {cfg.query_tolerance}"
        )
    log.info(
        "queries encoded by %s for %s: loss %.5f within %s",
        queries.fingerprint.id,
        documents.fingerprint.id,
        loss,
        cfg.query_tolerance,
    )
    return queries


class QueryEmbedder:
    """Query vectors for one model: an LRU in front (queries repeat; embedding is the cost) and
    micro-batching behind it. Concurrent requests that miss the cache are embedded together in
    one forward pass: a single consumer takes everything queued when it is free (up to
    `max_batch`), so a lone request waits for nothing and a burst shares one batch."""

    def __init__(self, embedder: Embedder, size: int, max_batch: int = 32) -> None:
        self.embedder = embedder
        # One dedicated inference thread per model: torch/OpenMP keeps one thread team per
        # calling thread, and teams left spinning on a 2-core machine slow the one working.
        self.executor = ThreadPoolExecutor(
            1, thread_name_prefix="query-embed", initializer=embedder.configure_thread
        )
        self.size = size
        self.max_batch = max_batch
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._consumer: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0
        self.batches = 0

    def _get(self, query: str) -> np.ndarray | None:
        with self._lock:
            vec = self._lru.get(query)
            if vec is not None:
                self._lru.move_to_end(query)
                self.hits += 1
            return vec

    def _put(self, query: str, vec: np.ndarray) -> None:
        with self._lock:
            self.misses += 1
            if self.size:
                self._lru[query] = vec
                while len(self._lru) > self.size:
                    self._lru.popitem(last=False)

    def embed(self, query: str) -> np.ndarray:
        """Blocking, unbatched: for callers outside the event loop."""
        vec = self._get(query)
        if vec is None:
            vec = self.embedder.embed_queries([query])[0]
            self._put(query, vec)
        return vec

    @property
    def idle(self) -> bool:
        """No batch in flight: a request now would be a batch of one anyway."""
        return not self._pending and (self._consumer is None or self._consumer.done())

    async def aembed(self, query: str) -> np.ndarray:
        vec = self._get(query)
        if vec is not None:
            return vec
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((query, fut))
        if self._consumer is None or self._consumer.done():
            self._consumer = asyncio.create_task(self._consume())
        return await fut

    async def _consume(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            texts = list(dict.fromkeys(q for q, _ in batch))
            try:
                loop = asyncio.get_running_loop()
                vecs = await loop.run_in_executor(self.executor, self.embedder.embed_queries, texts)
            except Exception as e:  # every waiter of this batch gets the error, none hangs
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            by_text = dict(zip(texts, vecs, strict=True))
            for text, vec in by_text.items():
                self._put(text, vec)
            for q, fut in batch:
                if not fut.done():
                    fut.set_result(by_text[q])


class EmbeddingCache:
    """Document vectors on disk keyed by (fingerprint id, text sha256).

    Makes re-ingest and repeated evaluation cost seconds instead of minutes; a different model
    or a changed text can never hit a stale vector because both are in the key."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vec (fp TEXT, sha TEXT, v BLOB, PRIMARY KEY (fp, sha))"
        )
        self._lock = threading.Lock()

    def get_many(self, fp: str, shas: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(shas), 500):
                chunk = list(shas[i : i + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT sha, v FROM vec WHERE fp = ? AND sha IN ({marks})", [fp, *chunk]
                )
                for sha, blob in rows:
                    found[sha] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, fp: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                [(fp, sha, np.asarray(v, dtype=np.float32).tobytes()) for sha, v in items],
            )

    def close(self) -> None:
        self._db.close()


def embed_documents_cached(
    embedder: Embedder,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed `texts` as documents, reusing and filling `cache`; `progress(n)` per finished n."""
    fp = embedder.fingerprint.id
    shas = [text_sha256(t) for t in texts]
    known = cache.get_many(fp, shas) if cache else {}
    out = np.zeros((len(texts), embedder.fingerprint.dim), dtype=np.float32)
    todo = [i for i, s in enumerate(shas) if s not in known]
    for i, s in enumerate(shas):
        if s in known:
            out[i] = known[s]
    if progress and len(texts) - len(todo):
        progress(len(texts) - len(todo))
    for start in range(0, len(todo), chunk):
        idx = todo[start : start + chunk]
        vecs = embedder.embed_documents([texts[i] for i in idx])
        out[idx] = vecs
        if cache:
            cache.put_many(fp, [(shas[i], vecs[j]) for j, i in enumerate(idx)])
        if progress:
            progress(len(idx))
    return out
