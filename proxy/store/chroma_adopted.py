"""A Chroma collection written by a plain chromadb app, adopted as it is, and the new index
beside it (`migrate start --into NEW`) in the same layout.

The app's layout: a record's id is the doc id (any string), its document the text, its
metadata (flat: scalars and arrays of one scalar type) crossfade's `metadata` dict, so a
filter on `metadata.topic` addresses the key `topic`; its embedding is the app model's
vector. crossfade writes the adopted collection only to dual-write document updates, in this
layout: the document, the app's metadata, the old model's vector; never a key of its own.
A collection without documents takes its texts from `indexes.old.adopt.text_source` (edits
through the proxy kept as records of the migration state, as for Qdrant).

The binding (IndexInfo) lives in the migration state (a record, shared by a fleet), never in
the app's collection metadata; the text hash is computed from the document. The adoption checks
read the collection's persisted embedding function (proxy/store/chroma_ef.py) against
models.old, then re-embed a random sample of documents (proxy/migration/adoption.py).

The new collection is created on the same server, tenant and database, with cosine space and
the new model's embedding-function configuration persisted, so after cutover the app's own
`client.get_collection(NEW)` embeds queries with the new model. Chroma needs an embedding per
record: a record seeded without a new vector yet holds a placeholder (chroma.py's) and one
bookkeeping key, `crossfade:pending: true`, which every dense query and read excludes
(`$ne`, which also matches records without the key) and which a re-embed removes (a metadata
key set to None is deleted). Nothing else of crossfade's is written: crossfade's reads return
the app's keys only, and once every record is migrated (`migrate finish` needs 100%), a plain
client reads exactly the app's metadata. BM25 is the sidecar of chroma.py. The new collection
is created only where `--into` names it; without it the config's indexes.new is used as it is.

Chroma has no aliases: the serving pointer stays crossfade's. After cutover and finish, the
app must be pointed at NEW (its collection name), or keep reading through the proxy.

Filters here have no `exists` test (Chroma has none, and the app's records carry no list of
their paths): `is_empty`, `except` (which needs the key present) and a negated range are
refused (400). Chroma's `where` has no id either: ids every result must have go in the
request's `ids`; an id condition elsewhere (negated, in should) is refused. `$ne`/`$nin`
match records without the key, as Qdrant's must_not does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError

from proxy.config import IndexConfig, ModelConfig, Settings
from proxy.document import text_sha256
from proxy.errors import BadRequest
from proxy.store import (
    AdoptionRefused,
    Binding,
    IndexInfo,
    PointWrite,
    Records,
    bound_fingerprints,
    check_fingerprints,
)
from proxy.store.chroma import COSINE, ChromaStore, Keys, UnsupportedFilter, Where, chroma_path
from proxy.store.chroma_ef import Persisted, check_persisted
from proxy.store.texts import EditedTexts, TextSource

PENDING = "crossfade:pending"  # record metadata, new collection only: a placeholder embedding
RESERVED = "crossfade:"  # no key of the app's starts with it (reads drop such keys)
_SCALARS = (str, int, float, bool)


class UnsupportedMetadata(BadRequest, ValueError):
    """Metadata a Chroma record can't hold as the app's flat metadata."""


class AppKeys(Keys):
    """The app's own keys: `metadata.topic` is `topic`; no list of paths, no id key."""

    def key(self, field: str) -> str:
        path = chroma_path(field)
        if not path.startswith("metadata.") or path.removeprefix("metadata.").startswith(RESERVED):
            raise UnsupportedFilter(f"filter key {field!r}: filters address metadata keys")
        return path.removeprefix("metadata.")

    def present(self, key: str, yes: bool = True) -> Where:
        raise UnsupportedFilter(
            f"filter on {key!r}: an adopted Chroma collection can't test whether a key is "
            "present (Chroma has no such operator): is_empty, except and a negated range "
            "are not available"
        )

    ids_in_where = False  # (a filter's required ids go in the request's `ids`)

    def has_id(self, doc_ids: Sequence[str], neg: bool) -> Where:
        raise UnsupportedFilter(
            "has_id: an adopted Chroma collection filters by id only as a condition every "
            "result must meet (not negated, nor inside should/must_not)"
        )


def app_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if not k.startswith(RESERVED)}


def check_flat(docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Refuse metadata the app's flat layout can't hold."""
    for doc_id, metadata in docs:
        for k, v in metadata.items():
            flat = isinstance(v, _SCALARS) or (
                isinstance(v, list)
                and v
                and len({type(x) for x in v}) == 1
                and isinstance(v[0], _SCALARS)
            )
            if k.startswith(RESERVED) or not flat:
                raise UnsupportedMetadata(
                    f"doc {doc_id!r}: metadata key {k!r}: an adopted Chroma collection "
                    "holds flat metadata (scalars, arrays of one scalar type), keys not "
                    f"starting with {RESERVED!r}"
                )


class AdoptedChromaStore(ChromaStore):
    """`records`: the migration state's, where the binding lives (`legacy`: the directory of
    an earlier version's binding files, data_dir/bindings); `texts`/`edited`: the old
    collection's texts where it stores none; `function`: the embedding-function
    configuration the new collection is created with."""

    adopted = True
    KEYS = AppKeys()
    DENSE_WHERE: Where = {PENDING: {"$ne": True}}
    NO_DENSE_WHERE: Where = {PENDING: True}

    def _is_dense(self, meta: dict[str, Any] | None) -> bool:
        return not (meta or {}).get(PENDING)

    def __init__(
        self,
        name: str,
        cfg: IndexConfig,
        records: Records,
        legacy: Path,
        bm25_dir: Path | None = None,
        texts: TextSource | None = None,
        edited: EditedTexts | None = None,
        function: Persisted | None = None,
    ) -> None:
        scope = f"{cfg.tenant or 'default_tenant'}/{cfg.database or 'default_database'}"
        self.binding = Binding(
            records,
            f"binding:chroma:{scope}:{cfg.collection}",
            legacy / "chroma" / scope / f"{cfg.collection}.json",
        )
        self.texts = texts
        self._edited = edited
        self._function = function
        super().__init__(name, cfg, bm25_dir)

    # --- binding: a record of the migration state, never the app's collection metadata --
    def _binding_of(self, col: Collection) -> IndexInfo | None:
        return self.binding.read()

    def _collection(self) -> Collection | None:
        with self._guard():
            try:
                return self._connected().get_collection(self.collection, embedding_function=None)
            except NotFoundError:
                return None

    def adoption_checks(self, model: ModelConfig) -> dict[str, Any]:
        col = self._collection()
        if col is None:
            raise AdoptionRefused(f"{self.location} does not exist")
        return {"embedding_function": check_persisted(col.configuration_json, model)}

    def stored_text(self) -> tuple[str, bool]:
        """Some document among the first records (a bounded look: Chroma can't ask for a
        record with a document)."""
        col = self._collection()
        docs = (col.get(limit=256, include=["documents"])["documents"] or []) if col else []  # type: ignore[list-item]
        return "as the records' documents", any(d for d in docs)

    def bind(self, info: IndexInfo) -> None:
        self.binding.write(info)
        self._load_info()

    def create(self, info: IndexInfo) -> None:
        """The new collection beside (cosine, the new model's embedding function persisted),
        its BM25 sidecar, then the binding."""
        bm25 = info.sparse and self._bm25_dir is not None
        want = IndexInfo(dim=info.dim, fingerprint=info.fingerprint, sparse=bm25)
        have = self.info()
        if have is not None:
            if have != want:
                raise RuntimeError(f"{self.location} exists, bound to {have}")
            return
        configuration: dict[str, Any] = dict(COSINE)
        if self._function is not None:
            configuration["embedding_function"] = self._function
        with self._guard(), self._lock:
            self._connected().get_or_create_collection(
                self.collection,
                configuration=configuration,  # type: ignore[arg-type]
                embedding_function=None,
            )
        if bm25:
            self._info = want  # (the sidecar is created for this binding)
            self._create_sidecar(want)
        self.bind(want)

    def drop(self) -> None:
        super().drop()
        self.binding.forget()

    # --- records in the app's layout ---------------------------------------------------
    def _text(self, doc_id: str, document: str | None) -> str | None:
        if document is not None:
            return document
        if self._edited is not None and (edited := self._edited.get(doc_id)) is not None:
            return edited
        return self.texts.get(doc_id) if self.texts is not None else None

    def why_no_text(self, doc_id: str) -> str:
        if self.texts is None:
            return "no document stored"
        return self.texts.problem(doc_id) or f"no line in {self.texts.path}"

    def _include(self, fields: Sequence[str] | None) -> list[str]:
        # the text hash is the document's, the vector's bookkeeping the pending marker's
        return (
            [] if fields is not None and set(fields) <= {"doc_id"} else ["documents", "metadatas"]
        )

    def _view(
        self,
        doc_id: str,
        text: str | None,
        meta: dict[str, Any] | None,
        fields: Sequence[str] | None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"doc_id": doc_id}
        want = (lambda k: True) if fields is None else (lambda k: k in fields)  # noqa: E731
        text = self._text(doc_id, text)
        if text is not None:
            if want("text"):
                out["text"] = text
            if want("text_sha256"):
                out["text_sha256"] = text_sha256(text)
        if want("metadata"):
            out["metadata"] = app_metadata(meta)
        info = self._info
        if info is not None and not (meta or {}).get(PENDING) and text is not None:
            # only crossfade writes vectors under a binding, each checked against it
            if want("model_fingerprint"):
                out["model_fingerprint"] = info.fingerprint
            if want("vector_sha256"):
                out["vector_sha256"] = text_sha256(text)
        return out

    def _record(self, p: PointWrite, held: set[str]) -> tuple[dict[str, Any] | None, str | None]:
        meta: dict[str, Any] = dict(p.metadata)
        if p.dense is None:
            meta[PENDING] = True
        meta.update(dict.fromkeys(held - set(meta)))
        return meta or None, (None if self.texts is not None else p.text)

    def upsert(self, points: Sequence[PointWrite]) -> None:
        check_fingerprints(self.info(), points)
        self.check_metadata([(p.doc_id, p.metadata) for p in points])
        if self._edited is not None:
            # no documents in this collection: an edit's text kept before the index is written
            self._edited.put([(p.doc_id, p.text) for p in points if p.if_text_sha256 is None])
        super().upsert(points)

    def check_metadata(self, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        check_flat(docs)

    def _update_if_same_text(self, col: Collection, points: Sequence[PointWrite]) -> None:
        """Re-embeds: the vector, and the pending marker removed, only where the stored text
        is still the one embedded (read, compared and written under the store's lock)."""
        ids = list(dict.fromkeys(p.doc_id for p in points))
        got = col.get(ids=ids, include=["documents"])  # type: ignore[list-item]
        docs = got.get("documents") or [None] * len(got["ids"])
        stored = {i: self._text(i, d) for i, d in zip(got["ids"], docs, strict=True)}
        done: dict[str, np.ndarray] = {}
        for p in points:
            text = stored.get(p.doc_id)
            if text is not None and text_sha256(text) == p.if_text_sha256:
                done.setdefault(p.doc_id, np.asarray(p.dense, dtype=np.float32))
        if done:
            col.update(
                ids=list(done),
                embeddings=np.stack(list(done.values())),
                metadatas=[{PENDING: None} for _ in done],  # type: ignore[misc]
            )

    def delete(self, doc_ids: Sequence[str]) -> None:
        super().delete(doc_ids)
        if self._edited is not None:
            self._edited.forget(doc_ids)

    def has_payload_field(self, field: str) -> bool:
        """Among the first records (a bounded look: Chroma has no `exists`)."""
        if self.info() is None:
            return False
        got = self._get(limit=256, include=["documents", "metadatas"])
        views = self._views(got, None)
        if field.startswith("metadata."):
            key = field.removeprefix("metadata.")
            return any(v.get("metadata", {}).get(key) not in (None, []) for v in views)
        return any(field in v for v in views)

    def fingerprints(self) -> dict[str, int]:
        return bound_fingerprints(self)

    # --- the adoption checks' reads ------------------------------------------------------
    def sample(self, n: int) -> list[tuple[str, str | None, np.ndarray]]:
        """`n` records at random offsets of the whole collection (Chroma has no random
        sample): a collection that became bilingual late shows it wherever its records sit."""
        col = self._collection()
        if col is None:
            return []
        with self._guard():
            total = int(col.count())
        offsets = sorted(random.sample(range(total), min(n, total)))
        out = []
        for offset in offsets:
            with self._guard():
                got = col.get(limit=1, offset=offset, include=["documents", "embeddings"])  # type: ignore[list-item]
            if not got["ids"] or got["embeddings"] is None or len(got["embeddings"]) == 0:
                continue
            doc_id = got["ids"][0]
            text = self._text(doc_id, (got.get("documents") or [None])[0])
            out.append((doc_id, text, np.asarray(got["embeddings"][0], dtype=np.float32)))
        return out

    def ids(self, batch: int = 2048) -> Iterator[list[str]]:
        col = self._collection()
        offset = 0
        while col is not None:
            with self._guard():
                ids = col.get(limit=batch, offset=offset, include=[])["ids"]
            yield list(ids)
            if len(ids) < batch:
                return
            offset += batch


def open_adopted_chroma(
    settings: Settings,
    which: str,
    placement: dict[str, Any] | None,
    bm25_dir: Any,
    records: Records,
) -> AdoptedChromaStore | None:
    """The adopted old collection, or the new one `--into` placed beside it (None: no
    placement, the config's indexes.new as it is). `bm25_dir(cfg)`: the sidecar's directory;
    `records`: the migration state's, where bindings and edited texts live."""
    from proxy.store.adopted import BINDINGS, edited_texts, load_texts
    from proxy.store.chroma_ef import function_for

    old = settings.indexes.old
    legacy = settings.data_path(BINDINGS)
    if which == "old":
        texts = load_texts(settings)
        edited = edited_texts(settings, texts, records)
        return AdoptedChromaStore("old", old, records, legacy, texts=texts, edited=edited)
    if not placement:
        return None
    cfg = old.model_copy(update={"collection": placement["collection"], "adopt": None})
    function = function_for(settings.models.new)
    return AdoptedChromaStore("new", cfg, records, legacy, bm25_dir(cfg), function=function)
