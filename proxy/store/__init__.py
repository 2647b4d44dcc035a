"""The VectorStore protocol: what the proxy needs from an index, whatever engine holds it.

Points are keyed by uuid5(doc_id) so the same document has the same point id in every index.
Payload of every point: doc_id, text, metadata, text_sha256; points that hold a dense vector
also carry model_fingerprint, vector_sha256 (hash of the text the vector was computed from) and
embedded_at. A write never leaves a dense vector of an older text beside a newer text: a point
either has a vector of its current text or none, so "has a dense vector" means "migrated".
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from proxy.config import ModelConfig
from proxy.errors import Conflict, Unavailable
from proxy.filters import Filter, FilterTree

if TYPE_CHECKING:
    from proxy.store.texts import TextSource

log = logging.getLogger("crossfade.store")
NAMESPACE = uuid.UUID("6f0c6c39-3f1a-4a57-9f39-1bd0a7e0c0de")
PAYLOAD_FIELDS = ("doc_id", "text", "metadata", "text_sha256")
# What a point says of its dense vector; all a re-embed writes besides the vector itself.
BOOKKEEPING = ("model_fingerprint", "vector_sha256", "embedded_at")


@functools.lru_cache(maxsize=1 << 16)
def point_id(doc_id: str) -> str:
    # Cached: a fused query maps ~150 candidate ids (6 us each uncached, ~1 ms a query).
    return str(uuid.uuid5(NAMESPACE, doc_id))


class FingerprintMismatch(Conflict, ValueError):
    """A dense vector from another model than the one the index is bound to (bilingual write)."""


class AdoptionRefused(Conflict, RuntimeError):
    """A collection to adopt can't be migrated as configured; nothing was written."""


class IndexUnavailable(Unavailable, RuntimeError):
    """An index that cannot be reached now (refused, timed out, server error). A fault to
    retry later, never taken to mean that the index does not exist."""

    def __init__(self, side: str, where: str, reason: str) -> None:
        self.side, self.where, self.reason = side, where, reason
        super().__init__(f"{side} index unreachable: {where}: {reason}")


@dataclass
class Sparse:
    indices: list[int]
    values: list[float]


@dataclass
class PointWrite:
    doc_id: str
    text: str
    text_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    dense: np.ndarray | None = None
    fingerprint: str | None = None  # required with `dense`
    sparse: Sparse | None = None
    embedded_at: str | None = None
    # A re-embed: write this point's vectors (and their bookkeeping) only, never its payload,
    # and only if the stored point still has this text_sha256; a point gone is skipped.
    if_text_sha256: str | None = None

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "doc_id": self.doc_id,
            "text": self.text,
            "metadata": self.metadata,
            "text_sha256": self.text_sha256,
        }
        if self.dense is not None:
            p["model_fingerprint"] = self.fingerprint
            p["vector_sha256"] = self.text_sha256
            p["embedded_at"] = self.embedded_at
        return p

    def bookkeeping(self) -> dict[str, Any]:
        """The payload that describes the dense vector (none without one)."""
        return {k: v for k, v in self.payload().items() if k in BOOKKEEPING}


@dataclass(frozen=True)
class IndexInfo:
    """What an index is bound to; persisted with the index."""

    dim: int
    fingerprint: str
    sparse: bool


class Records(Protocol):
    """Durable JSON records by key, shared by every process of a fleet: the migration state's
    (proxy/state's StateStore satisfies this structurally; the store layer never imports it).
    What an adapter must keep beyond its index, and every replica must see, lives here: the
    bindings of adopted collections, texts edited through the proxy."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class Binding:
    """An adopted collection's binding (IndexInfo) as the record `key` of the migration state,
    never in the user's collection. `legacy`: where an earlier version kept it, a file under
    one process's data_dir/bindings."""

    def __init__(self, records: Records, key: str, legacy: Path) -> None:
        self.records, self.key, self.legacy = records, key, legacy

    def read(self) -> IndexInfo | None:
        value = self.records.get(self.key)
        if value is None:
            value = self._import_legacy()
        return IndexInfo(**value) if value is not None else None

    def write(self, info: IndexInfo) -> None:
        self.records.set(self.key, dict(info.__dict__))

    def forget(self) -> None:
        self.records.delete(self.key)

    def _import_legacy(self) -> dict[str, Any] | None:
        """A binding file of an earlier version, imported into the records once (so an existing
        deployment keeps its adoption). The file is left alone: nothing writes or deletes it
        any more, and the import is recorded (`imported:<path>`), so a drop that deletes the
        record later is not undone by importing the file again."""
        mark = f"imported:{self.legacy.resolve()}"
        if not self.legacy.exists() or self.records.get(mark):
            return None
        value: dict[str, Any] = json.loads(self.legacy.read_text())
        self.records.set(self.key, value)  # (then the mark: a crash between re-imports, no loss)
        self.records.set(mark, True)
        return value


class VectorStore(Protocol):
    """What the proxy needs from an index. Adapters subclass it explicitly, so that the
    capability members below have their defaults: a backend that lacks a capability leaves
    the default, and callers ask the capability, never the adapter's type or attributes."""

    name: str
    vector: str
    sparse_vector: str
    # The collection's name on its server ('' for an edge shard, which has none).
    collection: str = ""

    # --- capabilities (the defaults say "this backend can't") ----------------------------
    # Calls go through a client that can fail as unreachable (IndexUnavailable) or hang: a
    # health probe asks `ping()` on a thread of its own, with a timeout.
    remote: bool = False
    # The engine holds BM25 sparse vectors and ranks them itself (`search_sparse`); without
    # it `search_sparse` raises, and a search leaves the BM25 list out.
    sparse: bool = False
    # Collection aliases on the server (`set_alias`, `alias_target`): the serving pointer
    # mirrored for clients that read the store directly.
    aliases: bool = False
    # Another model's dense vector can join this index's points under a name of its own
    # (`migrate start --in-place`: an edge shard, an adopted Qdrant collection).
    named_vectors: bool = False
    # An existing collection in its own layout, checked and bound by the adoption checks
    # (proxy/migration/adoption.py; the adapters: AdoptedStore for Qdrant, proxy/store/
    # adopted.py, AdoptedChromaStore for Chroma, proxy/store/chroma_adopted.py), through the
    # members after `texts` below.
    adopted: bool = False
    # This index shares its points with the other side's (in place): it holds its own
    # vectors only, and a point belongs to it once seeded (`seeded`).
    in_place: bool = False
    # Adopted: where the texts of a collection that stores none come from (a JSONL file,
    # indexes.old.adopt.text_source); None: stored in the collection.
    texts: TextSource | None = None
    # BM25 is kept beside the index, in a sidecar the store writes after each write of the
    # index (Chroma's): one that can fall out of step with it, or go missing (another
    # data_dir). `sidecar_missing`, `bm25_divergence` and `repair_bm25` check and mend it.
    bm25_sidecar: bool = False
    # Its count runs in this process holding the GIL (the embedded engine): every request
    # waits while it runs, so the serving path's recounts are spaced by their cost.
    blocking_count: bool = False

    @property
    def location(self) -> str:
        """Where the index lives, in words (the audit log, `migrate finish`)."""
        ...

    def ping(self) -> None:
        """Reachability probe, one small request (raises IndexUnavailable). An embedded
        index has nothing to reach."""

    def warm(self, budget: int) -> int:
        """Read the files a search of this index touches into the OS page cache, up to
        `budget` bytes, before it serves: bytes read. An embedded shard maps its vectors and
        graph from disk, and names hits from a map on disk: at a million points, cold, its
        first few hundred dense searches took 6-12 ms instead of 2 (docs/measurements/
        scale.md). A server holds its own memory: nothing to do."""
        return 0

    def seeded(self, doc_ids: Sequence[str]) -> set[str]:
        """In place: the ids among `doc_ids` already seeded into this index."""
        raise NotImplementedError(f"index {self.name!r} is not in place")

    # --- adopted collections (with `adopted`) ------------------------------------------
    def adoption_checks(self, model: ModelConfig) -> dict[str, Any]:
        """The adapter's own checks of the collection to adopt (it exists, holds the vector,
        what it says of the model that wrote it, against `model`), before the identity
        sample; what they found, for the start report. Raises AdoptionRefused."""
        raise NotImplementedError(f"index {self.name!r} is not adopted")

    def stored_text(self) -> tuple[str, bool]:
        """Where the collection stores its texts, in words, and whether some point holds one."""
        raise NotImplementedError(f"index {self.name!r} is not adopted")

    def sample(self, n: int) -> list[tuple[str, str | None, np.ndarray]]:
        """Up to `n` points holding a vector (doc id, text or None, stored vector), drawn at
        random from the whole collection."""
        raise NotImplementedError(f"index {self.name!r} is not adopted")

    def ids(self, batch: int = 2048) -> Iterator[list[str]]:
        """Every doc id, a batch at a time."""
        for points in self.scroll(batch, ["doc_id"]):
            yield [p["doc_id"] for p in points]

    def bind(self, info: IndexInfo) -> None:
        """Adopt the collection as it is: record which model its vectors come from (where
        crossfade keeps it, never in the collection)."""
        raise NotImplementedError(f"index {self.name!r} is not adopted")

    # --- a BM25 sidecar (with `bm25_sidecar`) --------------------------------------------
    def sidecar_missing(self) -> str | None:
        """With `bm25_sidecar`: why the sidecar can't be opened (missing, held by another
        process), None while it can."""
        return None

    def bm25_divergence(self) -> set[str]:
        """With `bm25_sidecar`: the doc ids where the sidecar and the index disagree (an id
        on one side only, another text hash). O(n)."""
        raise NotImplementedError(f"index {self.name!r} keeps no BM25 sidecar")

    def repair_bm25(
        self, document: Callable[[str], Sparse], doc_ids: Iterable[str] | None = None
    ) -> int:
        """With `bm25_sidecar`: rewrite the sidecar's records of `doc_ids` from the index
        (`document`: the BM25 encoder), or with None rebuild it whole; the ids written."""
        raise NotImplementedError(f"index {self.name!r} keeps no BM25 sidecar")

    def sidecar_position(self) -> int | None:
        """With `bm25_sidecar`: the fleet's change-log sequence this sidecar has caught up to
        (None: unknown, e.g. built before it followed a log: rebuild it)."""
        raise NotImplementedError(f"index {self.name!r} keeps no BM25 sidecar")

    def set_sidecar_position(self, seq: int) -> None:
        raise NotImplementedError(f"index {self.name!r} keeps no BM25 sidecar")

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one request (with `aliases`)."""
        raise NotImplementedError(f"index {self.name!r} has no aliases")

    def alias_target(self, alias: str) -> str | None:
        raise NotImplementedError(f"index {self.name!r} has no aliases")

    def info(self) -> IndexInfo | None: ...

    def create(self, info: IndexInfo) -> None: ...

    def upsert(self, points: Sequence[PointWrite]) -> None: ...

    def delete(self, doc_ids: Sequence[str]) -> None: ...

    def why_no_text(self, doc_id: str) -> str:
        """Why a point of this index has no text to re-embed it from."""
        ...

    def persisted_embedding_function(self) -> dict[str, Any] | None:
        """The embedding function persisted with the collection (Chroma's configuration:
        `{type, name, config}`), from which Chroma clients build theirs; None: none."""
        return None

    def check_ids(self, doc_ids: Sequence[str]) -> None:
        """Raise ValueError for an id this index can't key a point by (asked before a write
        touches any index). By default any doc id keys a point."""

    def check_metadata(self, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Raise ValueError for metadata (of each doc id) this index can't hold as given
        (asked before a write touches any index). By default any metadata."""

    def search_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]: ...

    def query_dense(
        self, vector: np.ndarray, limit: int, flt: Filter | None, fields: Sequence[str]
    ) -> list[tuple[dict[str, Any], float]]:
        """Nearest points with the payload `fields` (and doc_id): one call, for single-list
        modes that need no fusion."""
        ...

    def search_sparse(
        self, sparse: Sparse, limit: int, flt: Filter | None = None
    ) -> list[tuple[str, float]]:
        """BM25 ranking (with `sparse`)."""
        raise NotImplementedError(f"index {self.name!r} holds no BM25 vectors")

    def with_dense(self, doc_ids: Sequence[str]) -> set[str]: ...

    def dense_vectors(self, doc_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The dense vectors of those of `doc_ids` that hold one (float32)."""
        ...

    def dense_sample(self, limit: int) -> dict[str, np.ndarray]:
        """Up to `limit` points holding a dense vector, with it, in scroll order (the pairs
        the old -> new query map is fitted on)."""
        ...

    def retrieve(
        self, doc_ids: Sequence[str], fields: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]: ...

    def scroll(
        self, batch: int = 256, fields: Sequence[str] | None = None
    ) -> Iterator[list[dict[str, Any]]]: ...

    def count(self, dense_only: bool = False) -> int: ...

    def page(
        self, flt: Filter | FilterTree | None, limit: int, start: str | None, fields: Sequence[str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` points matching `flt` in the index's point order, from doc id `start`
        on; and the doc id that starts the next page (None: no more)."""
        ...

    def count_matching(self, flt: Filter | FilterTree | None) -> int: ...

    def without_dense(self, limit: int) -> list[str]:
        """Up to `limit` doc ids that hold no dense vector, in scroll order."""
        ...

    def fingerprints(self) -> dict[str, int]:
        """Points holding a dense vector, counted per `model_fingerprint` ("unknown" = none)."""
        ...

    def has_payload_field(self, field: str) -> bool:
        """Whether any point holds a non-empty value at payload path `field`."""
        ...

    def flush(self) -> None: ...

    def drop(self) -> None:
        """Delete the index and everything in it (rebuilds and simulations only)."""
        ...

    def close(self) -> None: ...


# After a failed first contact, `info()` asks the server again at most this often.
RETRY_S = 1.0


class FirstContact:
    """The binding of an index on a server, read at first contact: an unreachable server
    doesn't stop start-up, and until it first answers, `info()` raises IndexUnavailable (the
    index may well exist), asking again at most once per RETRY_S. An adapter reads its
    binding in `_read_binding` and probes the server in `_heartbeat`; it calls
    `_first_contact()` at the end of its constructor."""

    _info: IndexInfo | None = None
    _loaded = False
    _failed: IndexUnavailable | None = None
    _retry_at = 0.0

    def _read_binding(self) -> IndexInfo | None:
        """The binding as the server has it (raises IndexUnavailable)."""
        raise NotImplementedError

    def _heartbeat(self) -> None:
        """One small request (raises IndexUnavailable)."""
        raise NotImplementedError

    def _first_contact(self) -> None:
        try:
            self._load_info()
        except IndexUnavailable as e:
            log.warning("%s (will retry)", e)

    def _load_info(self) -> None:
        try:
            info = self._read_binding()
        except IndexUnavailable as e:
            self._failed, self._retry_at = e, time.monotonic() + RETRY_S
            raise
        self._info, self._loaded, self._failed = info, True, None

    def info(self) -> IndexInfo | None:
        if not self._loaded:
            failed = self._failed
            if failed is not None and time.monotonic() < self._retry_at:
                raise IndexUnavailable(failed.side, failed.where, failed.reason)
            self._load_info()
        return self._info

    def ping(self) -> None:
        """Reachability probe (raises IndexUnavailable). Reads the binding at first contact,
        or of a collection created since (by another replica)."""
        if not self._loaded or self._info is None:
            self._load_info()
            return
        self._heartbeat()


def check_fingerprints(info: IndexInfo | None, points: Sequence[PointWrite]) -> None:
    """The bilingual-write guard: every dense vector must come from the index's bound model."""
    if info is None:
        raise RuntimeError("index is not created yet")
    for p in points:
        if p.dense is None:
            continue
        if p.fingerprint != info.fingerprint:
            raise FingerprintMismatch(
                f"doc {p.doc_id!r}: vector from model {p.fingerprint!r}, "
                f"but this index is bound to {info.fingerprint!r}"
            )
        if p.dense.shape != (info.dim,):
            raise FingerprintMismatch(f"doc {p.doc_id!r}: vector shape {p.dense.shape}")


def bound_fingerprints(store: VectorStore) -> dict[str, int]:
    """An adopted collection carries no fingerprint per point: every vector it holds is its
    bound model's (the adoption checks and the write guard see to it)."""
    info = store.info()
    if info is None:
        return {}
    n = store.count(dense_only=True)
    return {info.fingerprint: n} if n else {}


def fingerprint_counts(facets: dict[str, int], with_vector: int) -> dict[str, int]:
    """Add the vectors that carry no fingerprint at all (written behind the proxy's back)."""
    out = dict(sorted(facets.items()))
    unknown = with_vector - sum(facets.values())
    if unknown > 0:
        out["unknown"] = unknown
    return out


def public_url(url: str) -> str:
    """A URL as it may be shown: credentials in it (user:pass@) are never echoed."""
    return re.sub(r"//[^/@]*@", "//", url)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename so a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
