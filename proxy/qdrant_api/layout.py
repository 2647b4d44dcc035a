"""The app's view of its points: ids and payload as the app wrote them.

An adopted collection keeps its own layout (proxy/store/adopted.py): its point ids (integers
or UUIDs) are crossfade's doc ids as text, its payload holds the text under `text_field` and
the metadata under `metadata_field` (or as every other key). A collection of crossfade's own
layout shows its doc ids and the payload `{doc_id, text, metadata}`; crossfade's bookkeeping
fields are never shown.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from proxy.config import Settings
from proxy.document import CorpusError, Doc, parse_doc
from proxy.qdrant_api import Unsupported
from proxy.store.adopted import InvalidDocId, adopted_point_id, node_text

PointId = int | str


@dataclass(frozen=True)
class AppLayout:
    adopted: bool
    text_field: str | None = "text"
    metadata_field: str | None = "metadata"
    node_json: bool = False  # LlamaIndex: the text is the node's, in `_node_content`

    @classmethod
    def of(cls, settings: Settings) -> AppLayout:
        adopt = settings.indexes.old.adopt
        if adopt is None or settings.indexes.old.backend != "qdrant":
            # (an adopted Chroma collection's app reads it through chromadb, not as Qdrant
            # points: Qdrant's surface shows crossfade's layout there)
            return cls(adopted=False)
        return cls(True, adopt.text_field, adopt.metadata_field, adopt.text_format == "llama-index")

    # --- ids --------------------------------------------------------------------------
    def point_id(self, doc_id: str) -> PointId:
        return adopted_point_id(doc_id) if self.adopted else doc_id

    def doc_id(self, pid: PointId) -> str:
        if not self.adopted:
            return str(pid)
        if isinstance(pid, int):
            if pid < 0:
                raise Unsupported(f"point id {pid}: ids are unsigned integers or UUIDs")
            return str(pid)
        try:
            return str(uuid.UUID(pid))  # Qdrant takes any UUID spelling; one canonical form
        except ValueError:
            raise Unsupported(f"point id {pid!r}: ids are unsigned integers or UUIDs") from None

    # --- payload ----------------------------------------------------------------------
    def payload(self, view: dict[str, Any]) -> dict[str, Any]:
        """The payload as the app stored it, from crossfade's view of a point."""
        text, meta = view.get("text"), dict(view.get("metadata") or {})
        if not self.adopted:
            return {"doc_id": view["doc_id"], "text": text, "metadata": meta}
        out: dict[str, Any] = {self.metadata_field: meta} if self.metadata_field else meta
        if self.text_field and text is not None and not self.node_json:
            out[self.text_field] = text  # (a JSON text field is in the metadata as written)
        return out

    def text_in(self, payload: dict[str, Any] | None) -> str | None:
        """The text an app's payload carries (LangChain's `page_content`, the text inside
        LlamaIndex's `_node_content`), or None."""
        if not self.text_field or not payload:
            return None
        text = payload.get(self.text_field)
        if self.node_json:
            text = node_text(text)
        return text if isinstance(text, str) else None

    def text_where(self) -> str:
        """Where this layout keeps the text, for a refusal that names it."""
        if self.node_json:
            return f"payload[{self.text_field!r}] (LlamaIndex's node JSON, its 'text')"
        return f"payload[{self.text_field!r}]" if self.text_field else "nowhere (text_source)"

    def document(self, pid: PointId, text: str, payload: dict[str, Any] | None, where: str) -> Doc:
        """A point the app upserts (its Document's text, its payload) as a crossfade document."""
        doc_id, meta = self._split(pid, payload)
        try:
            return parse_doc({"id": doc_id, "text": text, "metadata": meta}, where)
        except CorpusError as e:
            raise Unsupported(str(e)) from None

    def _split(self, pid: PointId, payload: dict[str, Any] | None) -> tuple[str, Any]:
        payload = dict(payload or {})
        doc_id = self.doc_id(pid)
        if self.adopted:
            try:
                adopted_point_id(doc_id)
            except InvalidDocId as e:
                raise Unsupported(str(e)) from None
        if self.metadata_field is None:
            if self.text_field and not self.node_json:
                payload.pop(self.text_field, None)
            return doc_id, payload
        meta = payload.pop(self.metadata_field, None) or {}
        if self.text_field:
            payload.pop(self.text_field, None)
        if not self.adopted:
            payload.pop("doc_id", None)
        if payload or not isinstance(meta, dict):
            keys = ", ".join(sorted(payload)) or self.metadata_field
            raise Unsupported(
                f"payload keys {keys}: this collection's layout keeps metadata as an object "
                f"under {self.metadata_field!r}"
                + (f" and the text under {self.text_field!r}" if self.text_field else "")
            )
        return doc_id, meta

    def metadata_key(self, key: str) -> str:
        """A payload key of the app's filter as a key of the documents' metadata."""
        if self.text_field and (key == self.text_field or key.startswith(self.text_field + ".")):
            raise Unsupported(f"filter key {key!r}: filtering on the text is not supported")
        if self.metadata_field is None:
            return key
        prefix = self.metadata_field + "."
        if not key.startswith(prefix):
            raise Unsupported(
                f"filter key {key!r}: this collection's filterable fields are under {prefix}<key>"
            )
        return key.removeprefix(prefix)
