"""Configuration: one YAML file plus CROSSFADE_* environment overrides.

Environment variables win over the file; nested fields use `__`, e.g.
`CROSSFADE_MODE=new` or `CROSSFADE_FUSION__K=30`. A wrong config fails at start with the
dotted name of the offending field (see `ConfigError`).
"""

from __future__ import annotations

import json
import os
import re
import sysconfig
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from proxy.errors import CrossfadeError


class Mode(StrEnum):
    OLD = "old"
    SHADOW = "shadow"
    FUSED = "fused"
    NEW = "new"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


InferenceRuntime = Literal["torch", "onnx", "onnx-int8"]


class ModelConfig(Strict):
    """One embedding model. `path` may start with `site:` (relative to site-packages), which is
    how packaged weights are found without network access. `kind: openai` is a hosted model
    behind any server that speaks `/v1/embeddings` (OpenAI, Azure, TEI, Infinity, Ollama,
    vLLM): `base_url` and `model` instead of `path`, its key from the environment."""

    kind: Literal["sentence-transformers", "onnx", "openai"] = Field(
        description="Loader: a sentence-transformers directory or name, one ONNX file, or an "
        "OpenAI-compatible embeddings API."
    )
    path: str | None = Field(
        None,
        description="Model directory/name (sentence-transformers) or .onnx file; "
        "required for those kinds.",
    )
    name: str | None = Field(
        None, description="Human name in fingerprints; default: file stem (hosted: `model`)."
    )
    tokenizer: str | None = Field(
        None,
        description="tokenizer.json for kind=onnx; for kind=openai, counts tokens when the "
        "server reports no usage (else ~4 characters a token).",
    )
    output: str | None = Field(
        None, description="ONNX graph output holding the pooled sentence embedding (kind=onnx)."
    )
    max_length: int = Field(256, ge=8, le=8192, description="Token limit per text.")
    normalize: bool = Field(True, description="L2-normalise embeddings (cosine distance).")
    query_prefix: str = Field("", description="Prepended to queries (e.g. 'query: ' for e5).")
    document_prefix: str = Field("", description="Prepended to documents.")
    batch_size: int = Field(
        32, ge=1, le=2048, description="Texts per encode call (kind=openai: per API request)."
    )
    threads: int = Field(0, ge=0, description="Intra-op threads; 0 = library default.")
    runtime: InferenceRuntime = Field(
        "torch",
        description="kind=sentence-transformers: what runs the model. `torch`; `onnx` = an "
        "fp32 ONNX Runtime graph exported once from the directory (cached by weights hash "
        "under `model_cache`, checked at export to give torch's vectors within cosine "
        "0.9999: the same fingerprint); `onnx-int8` = `int8_path`, a different fingerprint.",
    )
    int8_path: str | None = Field(
        None,
        description="kind=sentence-transformers: an int8 ONNX export of the same weights "
        "(pooled output, or last_hidden_state that is mean-pooled), for runtime `onnx-int8`.",
    )
    query_runtime: InferenceRuntime | None = Field(
        None,
        description="Runtime of the query encoder if not `runtime`. One with another "
        "fingerprint (onnx-int8 for an fp32 index) is allowed only within `query_tolerance`.",
    )
    query_tolerance: float = Field(
        0.005,
        ge=0,
        le=1,
        description="Quality loss allowed to a query encoder of another fingerprint, measured "
        "at load as 1 - the lowest cosine between its vectors and the document runtime's on "
        "fixed probe texts; above it the proxy refuses to start.",
    )
    # -- kind: openai ------------------------------------------------------------------------
    base_url: str = Field(
        "https://api.openai.com/v1",
        description="kind=openai: the API's base URL, up to and including `/v1`.",
    )
    model: str | None = Field(
        None, description="kind=openai: the model name sent with every request (required)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="kind=openai: API key; set it in the environment "
        "(CROSSFADE_MODELS__NEW__API_KEY), not in a file. Never printed or logged.",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="kind=openai: environment variable read for the key when `api_key` is "
        "unset (a server without auth needs neither).",
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="kind=openai: ask for this many dimensions (Matryoshka truncation); longer "
        "answers are cut here too, and every vector is L2-normalised afterwards.",
    )
    max_concurrent_requests: int = Field(
        4, ge=1, le=256, description="kind=openai: API requests in flight at most."
    )
    timeout_s: float = Field(
        30.0, gt=0, le=600, description="kind=openai: timeout of one document request."
    )
    query_timeout_s: float = Field(
        2.0,
        gt=0,
        le=120,
        description="kind=openai: timeout of a query's embedding request (not retried: a "
        "failing model is served around, marked degraded).",
    )
    max_retries: int = Field(
        6,
        ge=0,
        le=50,
        description="kind=openai: retries of a document request answered 429 or 5xx, or lost "
        "(exponential backoff with jitter; `Retry-After` honoured).",
    )
    backoff_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="kind=openai: wait before the first retry; doubles each retry (with "
        "jitter), at most 30 s.",
    )
    max_retry_after_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="kind=openai: the longest wait a `Retry-After` header is honoured for "
        "(a larger one waits this long): one answer can't hold a write for a day.",
    )
    requests_per_minute: float = Field(
        0.0, ge=0, description="kind=openai: request rate limit; 0 = none."
    )
    tokens_per_minute: float = Field(
        0.0,
        ge=0,
        description="kind=openai: token rate limit (as the server counts them in `usage`); "
        "0 = none.",
    )
    canary_interval_s: float = Field(
        300.0,
        ge=0,
        description="kind=openai: how often the canary texts are re-embedded to catch a "
        "model changed under the same name; 0 = only at start-up.",
    )
    canary_min_cosine: float = Field(
        0.999,
        gt=0,
        le=1,
        description="kind=openai: a canary vector less similar than this to the one stored "
        "at migration start is drift.",
    )

    @model_validator(mode="after")
    def _kind_needs(self) -> ModelConfig:
        if self.kind == "onnx" and not self.tokenizer:
            raise ValueError("kind 'onnx' needs 'tokenizer' (a tokenizer.json path)")
        if self.kind == "openai" and not self.model:
            raise ValueError("kind 'openai' needs 'model' (the API's model name)")
        if self.kind != "openai" and not self.path:
            raise ValueError(f"kind {self.kind!r} needs 'path'")
        runtimes = {self.runtime, self.query_runtime or self.runtime}
        if runtimes != {"torch"} and self.kind != "sentence-transformers":
            raise ValueError("'runtime' and 'query_runtime' apply to kind sentence-transformers")
        if "onnx-int8" in runtimes and not self.int8_path:
            raise ValueError("runtime 'onnx-int8' needs 'int8_path' (an int8 .onnx file)")
        return self


class AdoptConfig(Strict):
    """An existing collection taken as it is (written by the application: LangChain,
    LlamaIndex, plain qdrant-client or chromadb). Its points keep their ids (Qdrant: integers
    or UUIDs; Chroma: any string; they become doc ids) and their layout; crossfade writes them
    only to dual-write document updates, in this same layout. On Chroma the text is the
    record's document and the metadata its metadata: text_field, metadata_field and
    text_format are Qdrant's and refused there."""

    text_field: str | None = Field(
        "page_content",
        description="Payload field holding the text (LangChain: page_content); null = the "
        "collection stores no text (then `text_source` is needed).",
    )
    metadata_field: str | None = Field(
        "metadata",
        description="Payload field holding the metadata object; null = every other payload key.",
    )
    text_format: Literal["plain", "llama-index"] = Field(
        "plain",
        description="'plain': the text field holds the text. 'llama-index': it holds "
        "LlamaIndex's node as JSON (text_field `_node_content`, metadata_field null), and the "
        "document's text is what LlamaIndex embeds for the node (its metadata and text through "
        "the node's own templates); the field is kept as the app wrote it.",
    )
    text_source: str | None = Field(
        None,
        description="JSONL of {id, text} for a collection without stored text; relative paths "
        "are under data_dir. Looked up by id through an index of line offsets (built once per "
        "version of the file, under data_dir/cache), never loaded whole.",
    )
    identity_sample: int = Field(
        32,
        ge=1,
        le=10_000,
        description="Stored texts re-embedded to check the old model, drawn at random from the "
        "whole collection.",
    )
    identity_min_cosine: float = Field(
        0.98,
        gt=0,
        le=1,
        description="A stored vector matches the old model if its re-embedded text is at least "
        "this similar.",
    )

    @model_validator(mode="after")
    def _node_needs_field(self) -> AdoptConfig:
        if self.text_format == "llama-index" and self.text_field is None:
            raise ValueError("text_format 'llama-index' reads the node JSON in 'text_field'")
        return self


# Where a Qdrant point keeps its text and metadata: fixed on Chroma (document, metadata).
QDRANT_ADOPT_FIELDS = {"text_field", "metadata_field", "text_format"}

# Chroma's rule for collection names (its server refuses any other).
CHROMA_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


class IndexConfig(Strict):
    backend: Literal["edge", "qdrant", "chroma"] = Field(
        "edge",
        description="'edge' = embedded qdrant-edge shard; 'qdrant' = Qdrant server; "
        "'chroma' = Chroma server (or an embedded Chroma with `url: local:PATH`).",
    )
    path: str | None = Field(
        None, description="Shard directory (edge); relative paths are under data_dir."
    )
    url: str | None = Field(
        None,
        description="Server URL (backend=qdrant or chroma, e.g. http://127.0.0.1:8000); "
        "'local:PATH' = the client's embedded mode on PATH (qdrant-client's local mode, "
        "Chroma's PersistentClient); ':memory:' = qdrant-client local mode in memory.",
    )
    api_key: SecretStr | None = Field(
        None, description="Qdrant API key (backend=qdrant); never printed or logged."
    )
    collection: str = Field(
        "crossfade",
        description="Collection name (backend=qdrant or chroma; Chroma's: 3-512 characters "
        "of [a-zA-Z0-9._-], starting and ending with a letter or digit).",
    )
    tenant: str | None = Field(
        None,
        description="Chroma tenant of the collection (backend=chroma); default: Chroma's "
        "`default_tenant`.",
    )
    database: str | None = Field(
        None,
        description="Chroma database of the collection, in `tenant` (backend=chroma); "
        "default: Chroma's `default_database`.",
    )
    vector: str = Field(
        "dense", description="Name of the dense vector in the index; '' = the unnamed vector."
    )
    sparse_vector: str = Field("bm25", description="Name of the BM25 sparse vector.")
    ef_search: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Chroma's HNSW search breadth (`hnsw.ef_search`) of the collection "
        "(backend=chroma): set where crossfade creates it, and on one of its own at first "
        "contact where it differs. Chroma's default (100) finds 98.6-99.2% of an exact top-100 "
        "(SciFact); 4 x fusion.candidates 99.97-100% (docs/measurements/chroma-eval.md). "
        "Default: Chroma's.",
    )
    timeout_s: int = Field(
        5,
        ge=1,
        le=600,
        description="Request timeout in whole seconds (backend=qdrant or chroma); an index "
        "that does not answer in time counts as unreachable.",
    )

    adopt: AdoptConfig | None = Field(
        None,
        description="Adopt an existing collection in its own layout (backend=qdrant or chroma, "
        "old index).",
    )

    @model_validator(mode="after")
    def _backend_needs_location(self) -> IndexConfig:
        if self.backend == "edge" and not self.path:
            raise ValueError("backend 'edge' needs 'path'")
        if self.adopt is not None and self.backend == "edge":
            raise ValueError(
                "'adopt' takes an existing Qdrant or Chroma collection (backend 'qdrant' or "
                "'chroma')"
            )
        if self.adopt is not None and self.backend == "chroma":
            qdrant_only = sorted(self.adopt.model_fields_set & QDRANT_ADOPT_FIELDS)
            if qdrant_only:
                raise ValueError(
                    f"adopt.{', adopt.'.join(qdrant_only)}: Qdrant's payload layout; a Chroma "
                    "record's text is its document and its metadata is the metadata"
                )
        if self.vector == "" and self.adopt is None:
            raise ValueError("the unnamed vector ('') is for an adopted collection only")
        if self.backend == "qdrant" and not self.url:
            raise ValueError("backend 'qdrant' needs 'url'")
        if self.backend != "chroma" and (self.tenant is not None or self.database is not None):
            raise ValueError("'tenant' and 'database' are Chroma's (backend 'chroma')")
        if self.backend != "chroma" and self.ef_search is not None:
            raise ValueError("'ef_search' is Chroma's (backend 'chroma')")
        if self.backend == "chroma":
            self._check_chroma()
        return self

    def _check_chroma(self) -> None:
        url = self.url or ""
        if not re.match(r"^(https?://[^/?#\s]+/?$|local:.+)", url):
            raise ValueError(
                "backend 'chroma' needs 'url': http(s)://HOST:PORT of a Chroma server, or "
                f"local:PATH for an embedded one (got {url!r})"
            )
        if self.api_key is not None:
            raise ValueError("'api_key' is Qdrant's: Chroma's server has no key of its own")
        if not CHROMA_NAME_RE.match(self.collection):
            raise ValueError(
                f"Chroma collection name {self.collection!r}: 3-512 characters of "
                "[a-zA-Z0-9._-], starting and ending with a letter or digit"
            )
        for what, value in (("tenant", self.tenant), ("database", self.database)):
            if value is not None and not value.strip():
                raise ValueError(f"'{what}' is empty")


class ModelsConfig(Strict):
    old: ModelConfig
    new: ModelConfig


class IndexesConfig(Strict):
    old: IndexConfig
    new: IndexConfig


class Weights(Strict):
    old: float = Field(ge=0)
    new: float = Field(ge=0)
    bm25: float = Field(ge=0)


class FusionConfig(Strict):
    """Weighted RRF: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.

    The default is a label-free rule, not a fit to one corpus: dense evidence counts once per
    document (its new-model rank once it has a new vector, until then the better of its
    old-model and BM25 ranks), BM25 adds half that weight, and the old list adds nothing of its
    own. Weights may change with coverage (linear between `weights_at_0` and
    `weights_at_100`); the rule keeps them equal. Labelled queries replace the rule with a fit
    for this corpus and model pair (`crossfade tune`), stored with the migration state."""

    k: int = Field(60, ge=1, le=1000, description="RRF constant k.")
    candidates: int = Field(100, ge=10, le=1000, description="Depth of each ranked list.")
    weights_at_0: Weights = Field(
        default_factory=lambda: Weights(old=0.0, new=1.0, bm25=0.5),
        description="List weights at 0% coverage (`new` weighs the imputed ranks).",
    )
    weights_at_100: Weights = Field(
        default_factory=lambda: Weights(old=0.0, new=1.0, bm25=0.5),
        description="List weights at 100% coverage and in `new` mode.",
    )
    bm25_after_cutover: bool = Field(
        True,
        description="In `new` mode, fuse BM25 with the new dense list (hybrid). Off = one "
        "dense search, the same work as a plain vector-search pipeline.",
    )
    impute_missing: bool = Field(
        True,
        description="Give a document with no new vector an imputed new-list rank "
        "(coverage-aware fusion). Off = plain RRF.",
    )
    impute_from: list[Literal["old", "bm25"]] = Field(
        default_factory=lambda: ["old", "bm25"],
        min_length=1,
        description="Lists whose best rank stands in for a missing new-list rank.",
    )
    scale_new_ranks: bool = Field(
        False,
        description="Divide new-list ranks by coverage: rank r among migrated docs estimates "
        "rank r/coverage among all docs.",
    )


class MigrationConfig(Strict):
    """Lazy re-embedding and background backfill, and their budget."""

    lazy: bool = Field(
        True,
        description="Enqueue every document a fused search returns that has no new vector. "
        "`migrate start` (strategy lazy) follows it; shadow and rebuild switch it off.",
    )
    backfill: bool = Field(True, description="Sweep the rest of the corpus in the background.")
    until: float = Field(
        100.0, ge=0, le=100, description="Backfill stops at this coverage (%); lazy hits go on."
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Documents per re-embed batch.")
    sort_window: int = Field(
        0,
        ge=0,
        le=8192,
        description="A local model's worker claims this many documents a step (0 = "
        "`batch_size`), sorts them by length and embeds them `batch_size` at a time, so each "
        "batch pads only to its own longest text (larger: less padding; a pause acts between "
        "batches, `until` between steps).",
    )
    max_docs_per_s: float = Field(
        0.0, ge=0, description="Re-embed rate cap in documents/s; 0 = no cap."
    )
    cpu_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of wall time the worker may spend re-embedding; it sleeps the rest.",
    )
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description="Inference threads the re-embed worker may use (torch); the rest of the "
        "cores stay free for queries.",
    )
    nice: int = Field(
        19,
        ge=0,
        le=19,
        description="CPU priority (Linux nice) of the worker's inference thread: 19 = it gets "
        "only what queries leave; 0 = same as queries.",
    )
    lease_s: float = Field(
        120.0, gt=0, description="A claimed batch returns to the queue if not done in this time."
    )
    in_serve: bool = Field(
        True,
        description="`crossfade serve` re-embeds too (its hits first, then the backfill). A "
        "fleet may set it false and leave re-embedding to `crossfade worker` processes, which "
        "claim the same shared queue: the replicas then only enqueue.",
    )
    finish_guard_s: float = Field(
        3600.0,
        ge=0,
        description="`migrate finish` waits this long after the last cutover (a rollback "
        "stays possible meanwhile) unless given --now.",
    )
    max_spend: float = Field(
        0.0,
        ge=0,
        description="Re-embedding stops when the migration's API spend (tokens x "
        "plan.price_per_million_tokens) reaches this; 0 = no cap. Raise it at run time with "
        "`crossfade backfill limit --max-spend`.",
    )


class RoutingConfig(Strict):
    """Traffic split: a sticky share of clients goes to another mode."""

    split_mode: Mode | None = Field(None, description="Mode for the split share of clients.")
    split_percent: float = Field(0.0, ge=0, le=100, description="Share of client keys (%).")
    client_key_header: str = Field(
        "X-Client-Key", description="Header whose value makes routing sticky per client."
    )
    without_key: Literal["random", "base"] = Field(
        "random",
        description="Requests without the client-key header: 'random' = each one drawn into "
        "the split at random (a client may see both modes); 'base' = always the base mode.",
    )


class ShadowConfig(Strict):
    sample_rate: float = Field(
        0.1, ge=0, le=1, description="Share of shadow-mode requests that also run the new path."
    )


class CutoverConfig(Strict):
    """The gate a cutover must pass (or be forced, which is recorded)."""

    min_coverage: float = Field(
        100.0,
        ge=0,
        le=100,
        description="Required coverage (%) for a cutover, and for serving `new` (base, split or "
        "per request) without force.",
    )
    max_ndcg_drop: float = Field(
        0.0, ge=0, le=1, description="New nDCG@10 may trail old by at most this."
    )
    max_recall_drop: float = Field(
        0.01, ge=0, le=1, description="New recall@10 may trail old by at most this."
    )
    max_p95_ms: float = Field(0.0, ge=0, description="New-mode p95 latency cap; 0 = none.")
    eval_set: str | None = Field(
        None,
        description="BEIR dir of labelled queries used when a cutover names none; "
        "relative paths are under data_dir.",
    )
    eval_split: str = Field("test", description="Qrels split of the eval set.")


class PlanConfig(Strict):
    price_per_million_tokens: float = Field(
        0.02,
        ge=0,
        description="Price of the new model's API per million tokens: `crossfade plan`'s "
        "estimate and the migration's spend (`migration.max_spend`).",
    )
    sample: int = Field(128, ge=8, le=10_000, description="Documents embedded to measure speed.")


def _key_list(value: Any) -> Any:
    """Keys from the environment: a JSON list or comma-separated (from a file: a list)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",")]
    return value


# A list of secrets; NoDecode: an environment value is split by `_key_list`, not JSON-decoded.
Keys = Annotated[list[SecretStr], NoDecode]


class ServerConfig(Strict):
    # A refused key is never echoed (pydantic would print its input value in the error).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str = Field("127.0.0.1", description="Bind address (loopback unless set otherwise).")
    port: int = Field(8000, ge=1, le=65535, description="Listen port.")
    max_query_chars: int = Field(2048, ge=1, description="Longer queries are refused (422).")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger bodies are refused.")
    query_cache_size: int = Field(4096, ge=0, description="LRU entries of query vectors/model.")
    coverage_refresh_s: float = Field(
        2.0,
        ge=0.1,
        description="How often coverage is recounted, at most: a recount that took c seconds "
        "waits 50c (the embedded engine's count stops every request while it runs).",
    )
    history_interval_s: float = Field(
        5.0, ge=0.5, description="How often coverage is sampled for the dashboard's chart."
    )
    admin_key: SecretStr | None = Field(
        None,
        description="The admin key: authorises everything, and is the only key for the "
        "admin endpoints (`Authorization: Bearer` or the `api-key` header); unset = a random "
        "one is written to <data_dir>/admin.key (mode 0600) at start. Never printed or logged.",
    )
    api_keys: Keys = Field(
        default_factory=list,
        description="Read-write keys (Qdrant's `service.api_key`): search and write documents "
        "on crossfade's API and the Qdrant surface, sent as the `api-key` header or "
        "`Authorization: Bearer <key>`. Set them in the environment "
        "(CROSSFADE_SERVER__API_KEYS, comma-separated or a JSON list). Never printed or logged.",
    )
    read_only_api_keys: Keys = Field(
        default_factory=list,
        description="Read-only keys (Qdrant's `service.read_only_api_key`): search, scroll, "
        "count and retrieve; every write is refused with 403 "
        "(CROSSFADE_SERVER__READ_ONLY_API_KEYS).",
    )
    reads_require_key: bool | None = Field(
        None,
        description="Whether searches and other reads need a key (any kind); null = only when "
        "`host` is not loopback (reads are open on 127.0.0.1, ::1, localhost). Writes always "
        "need a read-write or the admin key.",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header values served (DNS-rebinding guard; `*.example.com` matches "
        "subdomains, `*` = any); others get 400. null = localhost, 127.0.0.1, ::1 and `host` "
        "unless it is a wildcard address (0.0.0.0, ::).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "warning", description="Log level; 'info' adds one access line per request."
    )
    bm25_when_model_down: bool = Field(
        True,
        description="In `new` mode with the new model's API failing: serve BM25 alone, "
        "marked degraded; off = answer 503. (In `fused`, old + BM25 serve, marked degraded.)",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty = CORS off."
    )
    metrics_cache_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="`/metrics` recomputes the migration figures (counts per fingerprint, "
        "queue, coverage) at most once per this many seconds; scrapes in between get the last "
        "figures (request counters are always live).",
    )

    @field_validator("admin_key")
    @classmethod
    def _admin_key_usable(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            _check_key(v, "the admin key")
        return v

    @field_validator("api_keys", "read_only_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        return _key_list(v)

    @field_validator("api_keys", "read_only_api_keys")
    @classmethod
    def _keys_usable(cls, v: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(v):
            _check_key(key, f"key {i + 1} of the list")
        return v

    @model_validator(mode="after")
    def _keys_of_one_kind(self) -> ServerConfig:
        rw = {k.get_secret_value() for k in self.api_keys}
        ro = {k.get_secret_value() for k in self.read_only_api_keys}
        if rw & ro:
            raise ValueError("a key is in both api_keys and read_only_api_keys: one kind each")
        if self.admin_key is not None and self.admin_key.get_secret_value() in rw | ro:
            raise ValueError("the admin key is also in api_keys or read_only_api_keys")
        return self


def _check_key(key: SecretStr, what: str) -> None:
    """A key a client can send in a header: not empty, no surrounding or inner whitespace
    (servers strip it), printable ASCII. The message never holds the key."""
    value = key.get_secret_value()
    if not value.strip():
        raise ValueError(f"{what} is empty: set a long random value (or leave it unset)")
    if not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(f"{what} holds whitespace or characters a header can't carry")


class WritesConfig(Strict):
    """Document writes (PUT /documents, the Qdrant upsert and delete routes)."""

    threads: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads that embed and apply document writes; apart from the ones that "
        "serve searches, so slow writes never hold a search up.",
    )
    nice: int = Field(
        5,
        ge=0,
        le=19,
        description="CPU priority (Linux nice) of the write threads: the CPU a write's "
        "embedding and index update take yields to searches.",
    )
    retry_base_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="A batch one index refused (outage, full disk) is retried from the write "
        "journal after this long, doubling each failed attempt.",
    )
    retry_max_s: float = Field(
        60.0, gt=0, le=3600, description="The longest wait between two retries of a batch."
    )
    flush_interval_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How often written indexes are flushed to disk. A write is durable when "
        "it returns (the write journal is fsynced, the engine's log written); the journal "
        "keeps each batch until a flush covers it, so a crash, even of the machine, replays "
        "it. One flush for many writes: the embedded engine holds the GIL while it flushes.",
    )


class StateConfig(Strict):
    """Where the migration's durable state lives (proxy/state): files under `data_dir` for one
    process, or a PostgreSQL database every replica and worker of a fleet shares."""

    url: SecretStr | None = Field(
        None,
        description="`postgresql://USER:PASSWORD@HOST:PORT/DB` (any libpq URI): the serving "
        "pointer, switches, queue and leases, write journal, spend, audit log and bindings "
        "in PostgreSQL, shared by every `crossfade serve` and `crossfade worker` given the "
        "same URL. Unset: one process, state in SQLite files under data_dir. A secret: never "
        "logged (set it with CROSSFADE_STATE__URL to keep it out of the file).",
    )
    poll_s: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How often a replica reads the shared pointer and switches: a change made "
        "through any replica or the CLI takes effect everywhere within about this long.",
    )
    connect_timeout_s: float = Field(
        3.0,
        gt=0,
        le=60,
        description="How long to wait for the state store: past it, a replica serves its last "
        "known generation marked degraded, and refuses control changes and writes.",
    )
    changes_kept: int = Field(
        1_000_000,
        ge=1000,
        description="The last this many document writes are kept in the change log replicas' "
        "BM25 sidecars follow; a replica further behind (down that long) rebuilds its sidecar "
        "from the collection.",
    )
    pool_size: int = Field(
        8,
        ge=4,
        le=64,
        description="Connections to the state store per process (a write holds one for the "
        "fleet's write lock, a control change one for the control lock, beside those the "
        "work inside them uses).",
    )


class QdrantApiConfig(Strict):
    """Qdrant's REST query API on the proxy, for apps written against qdrant-client
    (`QdrantClient(url=<proxy>, cloud_inference=True)`): they send text, crossfade embeds it."""

    collection: str | None = Field(
        None,
        description="Collection name the apps use; it maps to the migration. Default: the "
        "old index's collection (an adopted collection's own name).",
    )
    raw_vectors: Literal["serve", "refuse", "pass"] = Field(
        "serve",
        description="A query with a vector instead of a Document: 'serve' = as an app's own "
        "vector (one crossfade returned from /v1/embeddings served as its text; an old-model "
        "one through the query map, see `vector_clients`); 'refuse' = 400 asking for a "
        "Document; 'pass' = search the index whose vector name and dimension it fits (the old "
        "one if both do), unfused.",
    )
    max_limit: int = Field(
        1000, ge=1, le=10_000, description="Largest offset + limit a query may ask for."
    )
    max_batch_searches: int = Field(
        64, ge=1, le=1024, description="Most searches in one `points/query/batch` request."
    )
    max_batch_limit: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Largest sum of offset + limit over the searches of one batch request "
        "(the results it may ask for); more is refused with 422.",
    )
    max_delete_points: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most points one `points/delete` may remove (by ids or by filter); a "
        "filter matching more is refused with 422 before anything is deleted: narrow it.",
    )


class ChromaApiConfig(Strict):
    """Chroma's HTTP API (v2, under `/api/v2`) on the proxy, for apps written against chromadb's
    `HttpClient`: one collection, the one the app had, served across the migration."""

    collection: str | None = Field(
        None,
        description="Collection name the apps use; it maps to the migration. Default: the "
        "old index's collection.",
    )
    tenant: str | None = Field(
        None,
        description="Tenant the apps name. Default: the old index's (backend chroma), else "
        "Chroma's `default_tenant`.",
    )
    database: str | None = Field(
        None,
        description="Database the apps name. Default: the old index's (backend chroma), else "
        "Chroma's `default_database`.",
    )
    space: Literal["cosine", "l2", "ip"] = Field(
        "cosine",
        description="The collection's distance, as its apps know it: a query's `distances` "
        "are this distance in the app's own model's space (cosine: 1 - cosine similarity; "
        "l2: squared Euclidean; ip: 1 - inner product).",
    )
    max_batch_size: int = Field(
        1024,
        ge=1,
        le=100_000,
        description="Most records one add, upsert or update may carry (said to clients by "
        "`pre-flight-checks`, which split larger batches themselves).",
    )
    max_results: int = Field(1000, ge=1, le=10_000, description="Largest `n_results` of a query.")
    max_queries: int = Field(
        64, ge=1, le=1024, description="Most query embeddings in one query request."
    )
    max_get: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most records one `get` returns: a `limit` over it, or a get without "
        "one that matches more, is refused (400): page with limit and offset.",
    )
    max_delete: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most records one delete may remove; a `where` matching more is refused "
        "(400) before anything is deleted.",
    )


class VectorClientsConfig(Strict):
    """Apps that send vectors, not text (LangChain's and LlamaIndex's Qdrant stores, Chroma
    clients, qdrant-client without cloud inference). Two ways they still migrate: crossfade is
    their embeddings API (`/v1/embeddings`) and remembers which text each vector it returned
    came from, so the vector comes back as text; or a map from the old model's space into the
    new one, fitted on the migrated documents' (old vector, new vector) pairs."""

    remember_texts: int = Field(
        100_000,
        ge=0,
        le=10_000_000,
        description="Most (vector -> text) entries remembered from `/v1/embeddings` answers, "
        "least recently used dropped first; 0 = remember none. Memory only, never logged or "
        "written to disk.",
    )
    remember_ttl_s: float = Field(
        3600.0,
        gt=0,
        le=7 * 86_400,
        description="How long a vector returned by `/v1/embeddings` is recognised as its text.",
    )
    remember_max_chars: int = Field(
        8192,
        ge=1,
        le=1_000_000,
        description="Longest text remembered; a longer one is embedded but not remembered (its "
        "vector then takes the vector path).",
    )
    embeddings_max_inputs: int = Field(
        2048,
        ge=1,
        le=100_000,
        description="Most texts one `/v1/embeddings` request may send (OpenAI's own limit is "
        "2048); more is a 400. LangChain sends `chunk_size` (1000) a request.",
    )
    embeddings_max_chars: int = Field(
        1_000_000,
        ge=1,
        le=100_000_000,
        description="Most characters, all texts together, one `/v1/embeddings` request may "
        "send; more is a 413. The body is also bounded by `server.max_body_bytes`.",
    )
    adapter: Literal["auto", "off"] = Field(
        "auto",
        description="The old -> new query map: 'auto' = fitted as coverage grows and used while "
        "its fidelity on held-out pairs passes `adapter_min_fidelity`; 'off' = old-model vectors "
        "are searched in the old index only.",
    )
    adapter_min_fidelity: float = Field(
        0.05,
        ge=-1,
        le=1,
        description="Served only when the map's fidelity, measured on held-out (old, new) pairs, "
        "reaches this: the mean overlap of each held-out document's 10 nearest neighbours through "
        "the map with the new model's own 10, minus the same overlap for the old model's own "
        "neighbours. 0 = the map sees the new model's neighbourhoods no better than the old model "
        "does; 0.05 asks for a margin (docs/measurements/vector-clients.md).",
    )
    adapter_min_pairs: int | None = Field(
        None,
        ge=22,
        le=10_000_000,
        description="Fewest migrated documents (pairs) a map is served from; unset = twice the "
        "old model's dimension (a d x d linear map from fewer pairs is barely constrained).",
    )
    adapter_max_pairs: int = Field(
        50_000,
        ge=22,
        le=10_000_000,
        description="Most pairs a map is fitted on (a seeded sample beyond): the fit's cost "
        "grows with them, its quality no more once there are many times the dimension.",
    )
    adapter_refit_growth: float = Field(
        0.25,
        gt=0,
        le=100,
        description="The map is refitted when the migrated documents have grown by this share "
        "since its last fit (0.25 = a quarter more pairs).",
    )
    write_min_cosine: float = Field(
        0.98,
        gt=0,
        le=1,
        description="A vector written with its text is taken as the old model's when the old "
        "model's embedding of that text is at least this similar (a vector crossfade returned "
        "from `/v1/embeddings` for that text needs no check); less is the bilingual write: 409.",
    )
    app_model: Literal["old", "new"] = Field(
        "old",
        description="Which model the apps' own query vectors come from when its dimension "
        "fits both: the old one (their own) until they move to the new one, after `migrate "
        "finish`; a vector of the other model's dimension is taken as that model's.",
    )
    after_finish: Literal["adapt", "refuse"] = Field(
        "adapt",
        description="After `migrate finish`, an old-model query vector crossfade can't tie to a "
        "text: 'adapt' = searched in the new index through the map (or refused if there is no "
        "usable map); 'refuse' = 400 naming the model to embed with.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CROSSFADE_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: str = Field(".crossfade", description="Where shards, caches and state live.")
    model_cache: str = Field(
        "models",
        description="Where the models' ONNX exports are cached (keyed by weights hash, so "
        "deployments on one host may share one); relative paths are under data_dir.",
    )
    mode: Mode = Field(Mode.FUSED, description="Serving mode: old | shadow | fused | new.")
    models: ModelsConfig
    indexes: IndexesConfig
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    migration: MigrationConfig = Field(default_factory=MigrationConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    cutover: CutoverConfig = Field(default_factory=CutoverConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    qdrant_api: QdrantApiConfig = Field(default_factory=QdrantApiConfig)
    chroma_api: ChromaApiConfig = Field(default_factory=ChromaApiConfig)
    vector_clients: VectorClientsConfig = Field(default_factory=VectorClientsConfig)
    writes: WritesConfig = Field(default_factory=WritesConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    bm25_avg_len: float = Field(
        256.0, gt=0, description="Expected document length in tokens for BM25 normalisation."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env beats the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _shards_apart(self) -> Settings:
        """Two embedded shards one inside the other: dropping the outer one (`migrate finish
        --drop`, a rebuild) would delete the inner one with it."""
        old, new = self.indexes.old, self.indexes.new
        if old.backend == new.backend == "edge":
            a = self.data_path(old.path or "old").resolve()
            b = self.data_path(new.path or "new").resolve()
            if a != b and (a in b.parents or b in a.parents):
                raise ValueError(
                    f"indexes.old.path ({a}) and indexes.new.path ({b}) lie one inside the "
                    "other: give each index a directory of its own"
                )
        return self

    @model_validator(mode="after")
    def _fleet_needs_a_server(self) -> Settings:
        """A shared state means several processes: an embedded shard opens in one only."""
        if self.state.url is None:
            return self
        for side in ("old", "new"):
            if getattr(self.indexes, side).backend == "edge":
                raise ValueError(
                    f"indexes.{side}.backend is edge, an embedded shard one process opens: a "
                    "fleet sharing state.url needs a vector store server every process reaches "
                    "(qdrant with a url, or chroma)"
                )
        return self

    def data_path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else Path(self.data_dir) / p


class ConfigError(CrossfadeError):
    """A config that cannot be used, with the dotted field names at fault (found at start-up,
    never answered over HTTP: the root's status)."""


def resolve_path(value: str) -> str:
    """`site:rel/path` -> absolute path under this interpreter's site-packages."""
    if value.startswith("site:"):
        return str(Path(sysconfig.get_paths()["purelib"]) / value.removeprefix("site:"))
    return value


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the YAML at `path` (or $CROSSFADE_CONFIG), apply env and `overrides`, validate."""
    path = path or os.environ.get("CROSSFADE_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {path}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in e.errors()
        ]
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from e


def _type_name(ann: Any) -> str:
    args = get_args(ann)
    if get_origin(ann) is Literal:
        return " / ".join(str(a) for a in args)
    if args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (optional)" if type(None) in args else ""
        )
    return getattr(ann, "__name__", str(ann))


def reference_markdown() -> str:
    """The config reference table, generated from the models above. The documentation's
    reference page is this text, inserted when the site is built (docs/hooks.py), so the docs
    cannot drift from the code; `crossfade config-reference` prints it."""
    rows = ["| field | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            dotted = f"{prefix}{name}"
            if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not Weights:
                walk(ann, dotted + ".")
                continue
            inner = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            if inner:  # an optional section (`indexes.old.adopt`): its fields, named
                walk(inner[0], dotted + ".")
                continue
            if f.is_required():
                default: Any = "required"
            elif f.default_factory is not None:
                value = f.default_factory()  # type: ignore[call-arg]
                default = value.model_dump() if isinstance(value, BaseModel) else value
            else:
                default = f.default
            if isinstance(default, StrEnum):
                default = default.value
            desc = (f.description or "").replace("|", "\\|")
            # `<data_dir>` as code: bare, markdown takes it for an HTML tag and drops it.
            desc = re.sub(r"(?<!`)<([a-z_]+)>", r"`<\1>`", desc)
            rows.append(f"| `{dotted}` | {_type_name(ann)} | `{default!s}` | {desc} |")

    walk(Settings, "")
    return "\n".join(rows)
