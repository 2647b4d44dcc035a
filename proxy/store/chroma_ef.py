"""A Chroma collection's embedding-function configuration: the model an app's chromadb code
embeds with, persisted server-side (chromadb >= 1.1.13) in the collection's
`configuration_json` as `embedding_function: {type: known, name, config}`, e.g.
`SentenceTransformerEmbeddingFunction(model_name=...)` -> `{name: sentence_transformer,
config: {model_name, device, normalize_embeddings, kwargs}}`; `{type: legacy}` (or none, or
Chroma's `default`) says nothing of the model.

Read: what an adopted collection says of the model that wrote it, checked against
`models.old` before the identity sample. Written: the new collection beside an adopted one
carries the new model's configuration, so the app's own `client.get_collection(NEW)` embeds
its queries with the new model after cutover.

Only the JSON is read and written: building chromadb's embedding function from it would load
the model (SentenceTransformer's constructor does), which crossfade has loaded its own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config import ModelConfig, resolve_path
from proxy.store import AdoptionRefused

SENTENCE_TRANSFORMER = "sentence_transformer"
# The config keys that name the model, across chromadb's known embedding functions.
MODEL_KEYS = ("model_name", "model", "model_id")


@dataclass(frozen=True)
class PersistedModel:
    """What a collection's configuration says of its embedding function."""

    function: str | None  # chromadb's EF name (None: legacy or none)
    model: str | None  # the model it names (None: it names none)


def persisted_model(configuration_json: dict[str, Any] | None) -> PersistedModel:
    ef = (configuration_json or {}).get("embedding_function") or {}
    if ef.get("type") != "known" or not ef.get("name"):
        return PersistedModel(None, None)
    config = ef.get("config") or {}
    model = next((str(config[k]) for k in MODEL_KEYS if config.get(k)), None)
    return PersistedModel(str(ef["name"]), model)


def _names(cfg: ModelConfig) -> set[str]:
    """The names a configured model goes by: its name, its hosted model name, its path."""
    out = {n for n in (cfg.name, cfg.model) if n}
    if cfg.path:
        path = resolve_path(cfg.path)
        out |= {path, Path(path).name}
    return out


def same_model(persisted: str, cfg: ModelConfig) -> bool:
    """Whether a persisted model name is the configured model: the same directory where both
    are paths here (a packaged model's directory is named `model`: basenames can't tell two
    apart), else the same name, or the same last path segment (a hub id
    `sentence-transformers/all-MiniLM-L6-v2`, a directory moved elsewhere)."""
    here = resolve_path(cfg.path) if cfg.path else None
    if here and Path(here).exists() and Path(persisted).exists():
        return Path(here).resolve() == Path(persisted).resolve()
    names = _names(cfg)
    return persisted in names or persisted.rstrip("/").rsplit("/", 1)[-1] in names


def check_persisted(configuration_json: dict[str, Any] | None, cfg: ModelConfig) -> str:
    """Refuse a collection whose persisted embedding function names another model than
    `cfg` (models.old); what was found, in words, for the start report."""
    found = persisted_model(configuration_json)
    if found.function is None or found.function == "default":
        what = "none persisted" if found.function is None else "Chroma's default"
        return f"{what}: the model is checked by the identity sample alone"
    if found.model is None:
        return f"{found.function}, naming no model: the identity sample alone checks it"
    configured = cfg.name or cfg.model or cfg.path
    if not same_model(found.model, cfg):
        raise AdoptionRefused(
            f"the collection's embedding function ({found.function}) names model "
            f"{found.model!r}, the configured old model is {configured!r} "
            f"({', '.join(sorted(_names(cfg)))}): configure the model that wrote this collection"
        )
    return f"{found.function} {found.model!r}: models.old ({configured})"


class _Named:
    """`name()` as chromadb asks it: of an object, the function's name (what it persists);
    of the class, a name of its own, since chromadb registers the class of every function it
    serialises under `cls.name()`: the real SentenceTransformer class stays registered."""

    def __get__(self, obj: Any, cls: Any) -> Any:
        if obj is None:
            return lambda: "crossfade:persisted"
        return lambda: obj.function


class Persisted:
    """An embedding function's configuration to persist, as chromadb's serialiser asks it
    (never called: crossfade embeds)."""

    name = _Named()

    def __init__(self, function: str, config: dict[str, Any]) -> None:
        self.function, self.config = function, config

    def is_legacy(self) -> bool:
        return False

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "l2", "ip"]

    def __call__(self, input: Any) -> Any:  # noqa: A002  # (chromadb's signature)
        raise RuntimeError("crossfade embeds: this configuration is only persisted")


def function_for(cfg: ModelConfig) -> Persisted | None:
    """The configuration a plain chromadb app embeds with `cfg` by: a sentence-transformers
    model (whatever runtime crossfade runs it with) as SentenceTransformerEmbeddingFunction
    with its directory (or name); None for a model chromadb has no function for (an ONNX
    file, a hosted model: the app passes its own embedding function)."""
    if cfg.kind != "sentence-transformers":
        return None
    model = resolve_path(cfg.path) if cfg.path else cfg.name
    if not model:
        return None
    return Persisted(
        SENTENCE_TRANSFORMER,
        {
            "model_name": model,
            "device": "cpu",
            "normalize_embeddings": cfg.normalize,
            "kwargs": {},
        },
    )
