"""An existing Qdrant collection adopted as it is, and the new index written in its layout.

The application wrote the collection (LangChain's QdrantVectorStore: UUID ids, the unnamed
vector, `page_content` + `metadata`; others: integer ids, a named vector, `text`, metadata as
the other payload keys, or no text at all). crossfade reads it through a `Layout` and never
rewrites its points, except to dual-write document updates, in the same layout.

The new index takes one of Qdrant's two migration shapes:
- beside (`--into COLLECTION`): a new collection in the adopted layout (so the application's
  own code reads it after cutover, through the alias) plus the BM25 sparse vector;
- in place (`--in-place`): a new named vector and the BM25 sparse vector added to the same
  collection; "in the new index" = holds the sparse vector, "migrated" = holds the new vector.

Neither carries crossfade's bookkeeping payload (fingerprint, text hash): the binding (model
fingerprint, dimension) lives in the migration state (a record, shared by a fleet), never in
the user's collection; text hashes are computed from the stored text, and conditional writes
compare the stored text itself.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models as qm

from proxy.config import IndexConfig, ModelConfig, Settings
from proxy.document import text_sha256
from proxy.errors import Invalid
from proxy.store import (
    AdoptionRefused,
    Binding,
    IndexInfo,
    PointWrite,
    Records,
    bound_fingerprints,
    check_fingerprints,
)
from proxy.store.server import ServerStore
from proxy.store.texts import EditedTexts, TextSource

BINDINGS = "bindings"  # where an earlier version kept bindings, under data_dir (imported)
EDITED = "edited-texts.sqlite"  # where an earlier version kept edited texts (imported)


class InvalidDocId(Invalid, ValueError):
    """A doc id that an adopted collection cannot key a point by (not an integer or UUID)."""


@functools.lru_cache(maxsize=1 << 16)
def adopted_point_id(doc_id: str) -> int | str:
    """Doc ids are the collection's own point ids, as text: "42" or a UUID."""
    if doc_id.isdigit() and str(int(doc_id)) == doc_id and int(doc_id) < 2**64:
        return int(doc_id)
    try:
        u = uuid.UUID(doc_id)
    except ValueError:
        u = None
    if u is None or str(u) != doc_id.lower():
        raise InvalidDocId(
            f"doc id {doc_id!r}: an adopted Qdrant collection keys its points by unsigned "
            "integers or UUIDs, so document ids must be one of those"
        )
    return str(u)


@dataclass(frozen=True)
class Layout:
    text_field: str | None  # None: no stored text (then `texts` holds it, by doc id)
    metadata_field: str | None  # None: every other payload key is metadata
    texts: TextSource | None = None
    edited: EditedTexts | None = None  # with `texts`: texts written through the proxy
    # The text field holds LlamaIndex's node JSON (`_node_content`); it stays in the metadata
    # as written (the app reads its nodes from it), the text is what LlamaIndex embeds.
    node_json: bool = False

    def text_of(self, doc_id: str, payload: dict[str, Any]) -> Any:
        text = payload.get(self.text_field) if self.text_field else None
        if text is not None and self.node_json:
            text = node_text(text)
        if text is None and self.edited is not None:
            text = self.edited.get(doc_id)
        if text is None and self.texts is not None:
            text = self.texts.get(doc_id)
        return text

    def why_no_text(self, doc_id: str) -> str:
        if self.texts is None:
            return f"no text stored under {self.text_field!r}"
        return self.texts.problem(doc_id) or f"no line in {self.texts.path}"

    def view(self, doc_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"doc_id": doc_id}
        text = self.text_of(doc_id, payload)
        if isinstance(text, str):
            out["text"], out["text_sha256"] = text, text_sha256(text)
        if self.metadata_field:
            meta = payload.get(self.metadata_field)
        else:
            meta = {k: v for k, v in payload.items() if k != self.text_field or self.node_json}
        out["metadata"] = meta if isinstance(meta, dict) else {}
        return out

    def payload(self, p: PointWrite) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.metadata_field:
            out[self.metadata_field] = p.metadata
        else:
            out.update(p.metadata)
        if self.text_field and self.node_json:
            out[self.text_field] = with_node_text(p.metadata.get(self.text_field), p.text, p.doc_id)
        elif self.text_field:
            out[self.text_field] = p.text
        return out

    def key(self, path: str) -> str:
        if path.startswith("metadata."):
            rest = path.removeprefix("metadata.")
            return f"{self.metadata_field}.{rest}" if self.metadata_field else rest
        return path


def _node(field: Any) -> dict[str, Any] | None:
    try:
        node = json.loads(field) if isinstance(field, str) else None
    except ValueError:
        return None
    return node if isinstance(node, dict) else None


def node_text(field: Any) -> str | None:
    """What LlamaIndex embeds for a node stored as JSON (its TextNode.get_content with
    metadata mode EMBED): the metadata not excluded from embedding, through the node's
    templates, then its text; the text alone when there is no metadata."""
    node = _node(field)
    text = node.get("text") if node else None
    if node is None or not isinstance(text, str):
        return None
    meta = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
    excluded = set(node.get("excluded_embed_metadata_keys") or ())
    template = node.get("metadata_template") or "{key}: {value}"
    sep = node.get("metadata_separator", "\n")
    shown = sep.join(
        template.format(key=k, value=str(v)) for k, v in meta.items() if k not in excluded
    ).strip()
    if not shown:
        return text
    return (
        str(node.get("text_template") or "{metadata_str}\n\n{content}")
        .format(content=text, metadata_str=shown)
        .strip()
    )


def with_node_text(field: Any, text: str, doc_id: str) -> str:
    """The node JSON for a document whose text is `text`: as written (byte for byte: the app
    parses it back) when it already gives that text; else an edit made through crossfade's
    own API, with plain text: the node's text replaced (made when there is no node)."""
    if node_text(field) == text:
        return str(field)
    node = _node(field) or {"id_": doc_id, "metadata": {}}
    node["text"] = text
    return json.dumps(node)


class AdoptedStore(ServerStore):
    """`in_place`: the old and new index live in one collection (the in-place shape)."""

    adopted = True
    named_vectors = True  # Qdrant >= 1.18 adds a named vector to a live collection

    def __init__(
        self,
        name: str,
        cfg: IndexConfig,
        layout: Layout,
        records: Records,
        legacy: Path,
        in_place: bool,
    ) -> None:
        """`records`: the migration state's, where the binding lives; `legacy`: the directory
        of an earlier version's binding files (data_dir/bindings)."""
        self.layout = layout
        self.in_place = in_place
        self.binding = Binding(
            records,
            f"binding:qdrant:{cfg.collection}:{cfg.vector or ''}",
            legacy / f"{cfg.collection}.{cfg.vector or '_unnamed'}.json",
        )
        super().__init__(name, cfg)

    # --- binding: a record of the migration state, never the user's collection --------
    def _read_binding(self) -> IndexInfo | None:
        with self._guard():
            exists = self.client.collection_exists(self.collection)
        return self.binding.read() if exists else None

    @property
    def location(self) -> str:
        vec = repr(self.vector) if self.vector else "the unnamed vector"
        return f"qdrant collection {self.collection!r}, vector {vec}"

    def exists(self) -> bool:
        with self._guard():
            return bool(self.client.collection_exists(self.collection))

    def vector_names(self) -> tuple[dict[str, int], set[str]]:
        """Dense vector names with their sizes ('' = unnamed), and sparse vector names."""
        with self._guard():
            params = self.client.get_collection(self.collection).config.params
        vecs = params.vectors
        dense = (
            {"": vecs.size}
            if isinstance(vecs, qm.VectorParams)
            else {k: v.size for k, v in (vecs or {}).items()}
        )
        return dense, set(params.sparse_vectors or {})

    @property  # type: ignore[override]
    def texts(self) -> TextSource | None:
        return self.layout.texts

    def adoption_checks(self, model: ModelConfig) -> dict[str, Any]:
        """It exists and holds the vector (Qdrant keeps no record of the model)."""
        if not self.exists():
            raise AdoptionRefused(f"collection {self.collection!r} does not exist")
        dense, _ = self.vector_names()
        if self.vector not in dense:
            names = ", ".join(repr(n) for n in dense) or "none"
            raise AdoptionRefused(
                f"collection {self.collection!r} has no vector {self.vector!r} (it has "
                f"{names}); set indexes.old.vector ('' = the unnamed vector)"
            )
        return {}

    def stored_text(self) -> tuple[str, bool]:
        field = self.layout.text_field
        if field is None:
            return "(indexes.old.adopt.text_field is null)", False
        return f"under {field!r}", self.has_payload_field(field)

    def bind(self, info: IndexInfo) -> None:
        """Adopt the collection as it is: record which model its vectors come from."""
        self.binding.write(info)
        self._info, self._loaded = info, True

    def create(self, info: IndexInfo) -> None:
        if self.info() is not None:
            if self._info != info:
                raise RuntimeError(
                    f"collection {self.collection!r} vector {self.vector!r} is bound to "
                    f"{self._info}"
                )
            return
        dense_cfg = qm.VectorParams(size=info.dim, distance=qm.Distance.COSINE)
        sparse_cfg = qm.SparseVectorParams(modifier=qm.Modifier.IDF)
        with self._guard():
            if not self.client.collection_exists(self.collection):
                self.client.create_collection(
                    self.collection,
                    vectors_config=dense_cfg if self.vector == "" else {self.vector: dense_cfg},
                    sparse_vectors_config={self.sparse_vector: sparse_cfg} if info.sparse else None,
                )
        dense, sparse = self.vector_names()
        with self._guard():
            # In place (Qdrant >= 1.18): the new vectors join the live collection.
            if self.vector not in dense:
                self.client.create_vector_name(
                    self.collection,
                    self.vector,
                    qm.DenseVectorNameConfig(
                        dense=qm.DenseVectorConfig(size=info.dim, distance=qm.Distance.COSINE)
                    ),
                )
            if info.sparse and self.sparse_vector not in sparse:
                self.client.create_vector_name(
                    self.collection,
                    self.sparse_vector,
                    qm.SparseVectorNameConfig(
                        sparse=qm.SparseVectorConfig(modifier=qm.Modifier.IDF)
                    ),
                )
        self.bind(info)

    # --- layout hooks ----------------------------------------------------------------
    def _pid(self, doc_id: str) -> int | str:
        return adopted_point_id(doc_id)

    def _select(self, fields: Sequence[str] | None) -> Any:
        return fields is None or bool(fields)

    def _view(self, rec: Any) -> dict[str, Any] | None:
        out = self.layout.view(str(rec.id), rec.payload or {})
        if self._info is not None:
            # Only crossfade writes vectors under a binding, each checked against it.
            out["model_fingerprint"] = self._info.fingerprint
            out["vector_sha256"] = out.get("text_sha256")
        return out

    def _key(self, path: str) -> str:
        return self.layout.key(path)

    def _point(self, p: PointWrite) -> qm.PointStruct:
        vec: Any = self._vectors(p)
        if set(vec) == {""} and not self.in_place:
            vec = vec[""]  # the unnamed vector alone: the plain form every client writes
        return qm.PointStruct(id=self._pid(p.doc_id), vector=vec, payload=self.layout.payload(p))

    carries_bookkeeping = False

    def delete(self, doc_ids: Sequence[str]) -> None:
        super().delete(doc_ids)
        if self.layout.edited is not None:
            self.layout.edited.forget(doc_ids)

    def _update_if_same_text(self, p: PointWrite) -> None:
        # With no text in the points the engine can't compare it: compare here (the worker
        # writes under the write lock, so no document write comes in between).
        if not self.layout.text_field and self.layout.text_of(p.doc_id, {}) != p.text:
            return
        if self.layout.node_json:  # the text sits inside a JSON string: read and compare
            # (called inside the caller's _guard: local mode's lock is held already)
            recs = self.client.retrieve(self.collection, [self._pid(p.doc_id)], True)
            if not recs or self.layout.text_of(p.doc_id, recs[0].payload or {}) != p.text:
                return
        super()._update_if_same_text(p)

    def why_no_text(self, doc_id: str) -> str:
        return self.layout.why_no_text(doc_id)

    def _same_text(self, p: PointWrite) -> qm.Filter | None:
        """Conditional write: only while the stored text is still the one embedded."""
        if not self.layout.text_field or self.layout.node_json:
            return None  # a fixed source, or compared by _update_if_same_text (write lock held)
        return qm.Filter(
            must=[qm.FieldCondition(key=self.layout.text_field, match=qm.MatchValue(value=p.text))]
        )

    def check_ids(self, doc_ids: Sequence[str]) -> None:
        for d in doc_ids:
            adopted_point_id(d)

    def upsert(self, points: Sequence[PointWrite]) -> None:
        check_fingerprints(self.info(), points)
        self.check_ids([p.doc_id for p in points])
        if self.layout.edited is not None and not self.layout.text_field:
            # The text can't go into the point, nor into the application's file: kept here,
            # before the index is written (a later read must see it, a re-embed embed it).
            self.layout.edited.put([(p.doc_id, p.text) for p in points if p.if_text_sha256 is None])
        if self.in_place:  # either side: the other's vectors live in the same points
            return self._upsert_in_place(points)
        plain = [self._point(p) for p in points if p.if_text_sha256 is None]
        with self._guard():
            if plain:
                self.client.upsert(self.collection, plain, wait=True)
            for p in points:  # re-embeds: vectors only, a payload read earlier never written back
                if p.if_text_sha256 is not None:
                    self._update_if_same_text(p)

    def _upsert_in_place(self, points: Sequence[PointWrite]) -> None:
        """In a collection both indexes share: this side's vectors only, never the point whole
        (an upsert would drop the other side's vectors: the application's, or the new and
        BM25 ones). A document update (it carries a dense vector) also sets the payload, and
        creates the point if it is new."""
        seeds = [p for p in points if p.dense is None and p.if_text_sha256 is None]
        updates = [p for p in points if p.dense is not None and p.if_text_sha256 is None]
        with self._guard():
            if seeds:
                self.client.update_vectors(
                    self.collection,
                    [
                        qm.PointVectors(id=self._pid(p.doc_id), vector=self._vectors(p))
                        for p in seeds
                    ],
                    wait=True,
                )
            if updates:
                ids = [self._pid(p.doc_id) for p in updates]
                have = {str(r.id) for r in self.client.retrieve(self.collection, ids, False)}
                fresh = [self._point(p) for p in updates if str(self._pid(p.doc_id)) not in have]
                if fresh:
                    self.client.upsert(self.collection, fresh, wait=True)
                for p in updates:
                    if str(self._pid(p.doc_id)) in have:
                        self.client.overwrite_payload(
                            self.collection, self.layout.payload(p), [self._pid(p.doc_id)]
                        )
                kept = [
                    qm.PointVectors(id=self._pid(p.doc_id), vector=self._vectors(p))
                    for p in updates
                    if str(self._pid(p.doc_id)) in have
                ]
                if kept:
                    self.client.update_vectors(self.collection, kept, wait=True)
            for p in points:
                if p.if_text_sha256 is not None:
                    self._update_if_same_text(p)

    def _member(self) -> qm.Filter | None:
        """In place, a point belongs to the new index once seeded (holds the BM25 vector)."""
        if self.in_place and self.name == "new":
            return qm.Filter(must=[qm.HasVectorCondition(has_vector=self.sparse_vector)])
        return None

    def count(self, dense_only: bool = False) -> int:
        if self.info() is None:
            return 0
        if dense_only:
            flt: qm.Filter | None = qm.Filter(must=[qm.HasVectorCondition(has_vector=self.vector)])
        else:
            flt = self._member()
        with self._guard():
            return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def has_payload_field(self, field: str) -> bool:
        # Asked before adoption too (is there any text?): no binding needed.
        return self._any_point_holds(field)

    def seeded(self, doc_ids: Sequence[str]) -> set[str]:
        """In place: the ids already seeded (holding the BM25 vector)."""
        return self._holding(doc_ids, self.sparse_vector)

    def fingerprints(self) -> dict[str, int]:
        return bound_fingerprints(self)

    def sample(self, n: int) -> list[tuple[str, str | None, np.ndarray]]:
        """Up to `n` points holding the vector (doc id, text or None, stored vector), drawn
        uniformly at random from the whole collection (Qdrant's random sample query): a
        collection that became bilingual late shows it wherever its points sit."""
        # (a collection with the unnamed vector holds it in every point)
        has = (
            qm.Filter(must=[qm.HasVectorCondition(has_vector=self.vector)]) if self.vector else None
        )
        with self._guard():
            res = self.client.query_points(
                self.collection,
                query=qm.SampleQuery(sample=qm.Sample.RANDOM),
                query_filter=has,
                limit=n,
                with_payload=True,
                with_vectors=[self.vector] if self.vector else True,
            )
        out = []
        for r in res.points:
            vec = r.vector.get(self.vector) if isinstance(r.vector, dict) else r.vector
            if vec is None:
                continue
            view = self.layout.view(str(r.id), r.payload or {})
            out.append((view["doc_id"], view.get("text"), np.asarray(vec, dtype=np.float32)))
        return out

    def ids(self, batch: int = 2048) -> Iterator[list[str]]:
        offset = None
        while True:
            with self._guard():
                recs, offset = self.client.scroll(
                    self.collection, limit=batch, offset=offset, with_payload=False
                )
            yield [str(r.id) for r in recs]
            if offset is None:
                return

    def drop(self) -> None:
        """Retire: in place, delete this index's vector(s) from the shared collection;
        otherwise the collection. The binding goes with it."""
        with self._guard():
            if self.in_place:
                dense, sparse = self.vector_names()
                if self.vector in dense:
                    self.client.delete_vector_name(self.collection, self.vector)
                if self.name == "new" and self.sparse_vector in sparse:
                    self.client.delete_vector_name(self.collection, self.sparse_vector)
            elif self.client.collection_exists(self.collection):
                self.client.delete_collection(self.collection)
        self.binding.forget()
        self._info = None


def edited_texts(
    settings: Settings, texts: TextSource | None, records: Records
) -> EditedTexts | None:
    """Where edits through the proxy to documents whose texts come from a file are kept: the
    migration state's records (an earlier version's file under data_dir imported once)."""
    return EditedTexts(records, settings.data_path(EDITED)) if texts else None


@functools.lru_cache(maxsize=4)
def _texts(path: str, version: tuple[int, int], index_dir: str) -> TextSource:
    return TextSource(Path(path), Path(index_dir))


def load_texts(settings: Settings) -> TextSource | None:
    adopt = settings.indexes.old.adopt
    if adopt is None or adopt.text_source is None:
        return None
    path = settings.data_path(adopt.text_source)
    if not path.exists():
        raise FileNotFoundError(f"indexes.old.adopt.text_source: {path} does not exist")
    st = path.stat()
    return _texts(str(path), (st.st_size, st.st_mtime_ns), str(settings.data_path("cache")))


def new_index_config(settings: Settings, placement: dict[str, Any] | None) -> IndexConfig:
    """The new index: the config's, or where `migrate start --into/--in-place` put it."""
    old, new = settings.indexes.old, settings.indexes.new
    if placement:
        new = new.model_copy(
            update={
                "backend": "qdrant",
                "url": old.url,
                "api_key": old.api_key,
                "timeout_s": old.timeout_s,
                "collection": placement["collection"],
                "vector": placement["vector"],
            }
        )
    return new


def is_in_place(old: IndexConfig, new: IndexConfig) -> bool:
    return new.backend == "qdrant" and new.url == old.url and new.collection == old.collection


def open_adopted(
    settings: Settings, which: str, placement: dict[str, Any] | None, records: Records
) -> Any:
    """`records`: the migration state's, where bindings and edited texts live."""
    old_cfg = settings.indexes.old
    adopt = old_cfg.adopt
    assert adopt is not None
    new_cfg = new_index_config(settings, placement)
    shared = is_in_place(old_cfg, new_cfg)
    if shared and new_cfg.vector == old_cfg.vector:
        raise ValueError(
            f"in place, the new vector needs another name than the old one ({old_cfg.vector!r})"
        )
    texts = load_texts(settings)
    edited = edited_texts(settings, texts, records)
    node_json = adopt.text_format == "llama-index"
    layout = Layout(adopt.text_field, adopt.metadata_field, texts, edited, node_json)
    legacy = settings.data_path(BINDINGS)
    if which == "old":
        return AdoptedStore("old", old_cfg, layout, records, legacy, shared)
    if new_cfg.backend == "edge":
        from proxy.store.edge import EdgeStore

        return EdgeStore("new", settings.data_path(new_cfg.path or "new"), new_cfg)
    if not shared:
        # Beside: the application will read this collection, so it stores the text too.
        layout = replace(layout, text_field=layout.text_field or "text", texts=None)
    return AdoptedStore("new", new_cfg, layout, records, legacy, shared)
