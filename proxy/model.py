"""The model-provider protocol and what every model, local or hosted, has: its identity (a
fingerprint, never a name), the vectors it bills for, and the fault of one that cannot answer.

The loaders and runtimes are in proxy/embedding.py (local) and proxy/hosted.py (`kind: openai`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from proxy.config import ModelConfig
from proxy.errors import Unavailable


@dataclass(frozen=True)
class Fingerprint:
    name: str
    weights_sha256: str
    dim: int
    distance: str
    normalize: bool
    query_prefix: str
    document_prefix: str
    max_length: int

    @property
    def id(self) -> str:
        """Short stable id written into every point's payload."""
        digest = hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()
        return f"{self.name}@{digest[:12]}"


class ModelUnavailable(Unavailable, RuntimeError):
    """A model that cannot answer now (a hosted API refusing, failing or too slow). A fault
    to serve around or retry later; `side` is set by whoever knows which model it is."""

    def __init__(self, model: str, reason: str, side: str | None = None) -> None:
        self.model, self.reason, self.side = model, reason, side
        super().__init__(f"model {model} unavailable: {reason}")


@dataclass(frozen=True)
class Embedded:
    """Document vectors and the tokens the provider billed for them (0 for a local model)."""

    vectors: np.ndarray
    tokens: int


class Embedder(Protocol):
    """The model-provider protocol: every model, local or hosted, is used through this.

    `hosted`: answers over a network (may fail, bills tokens, is checked by a canary).
    `request_batch` / `max_in_flight`: texts per call and calls the re-embed worker keeps in
    flight at once (a local model: one call at a time)."""

    fingerprint: Fingerprint
    hosted: bool
    request_batch: int
    max_in_flight: int

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_billed(self, texts: Sequence[str]) -> Embedded: ...

    def configure_thread(self) -> None: ...


def make_fingerprint(cfg: ModelConfig, weights: str, dim: int, default_name: str) -> Fingerprint:
    """A model's identity from its config, a digest of what makes its vectors (weights, or a
    hosted model's provider, name and dimensions) and its dimension."""
    return Fingerprint(
        name=cfg.name or default_name,
        weights_sha256=weights,
        dim=dim,
        distance="cosine" if cfg.normalize else "dot",
        normalize=cfg.normalize,
        query_prefix=cfg.query_prefix,
        document_prefix=cfg.document_prefix,
        max_length=cfg.max_length,
    )


def count_tokens(model: object, texts: Sequence[str]) -> list[int]:
    """Tokens per text by the model's own tokenizer, else the usual ~4 characters a token."""
    tok = getattr(model, "tokenizer", None) or getattr(
        getattr(model, "model", None), "tokenizer", None
    )
    if tok is None:
        return [max(1, len(t) // 4) for t in texts]
    if hasattr(tok, "encode_batch"):  # tokenizers.Tokenizer (ONNX loader, hosted models)
        if tok.truncation or tok.padding:  # a model's own truncates and pads: count on a copy
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(tok.to_str())
            tok.no_truncation()
            tok.no_padding()
        return [len(e.ids) for e in tok.encode_batch(list(texts))]
    # Counted untruncated, on purpose: verbose=False keeps the tokenizer from warning about
    # it ("longer than the specified maximum"); the plan states the truncation instead.
    ids = tok(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    return [len(x) for x in ids]
