"""A document: an id, a text and JSON metadata, as clients send it and indexes store it.

`parse_doc` is the one way a JSON object becomes a Doc (BEIR's `_id`/`title` or plain `id`),
with a message naming what is wrong; `check_storable` refuses what no index payload can hold
before anything is written; `doc_of` reads a stored point's payload back. Which text a vector
was computed from is said by the text's `text_sha256`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import Invalid


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


MAX_TEXT_CHARS = 1_000_000


@dataclass
class Doc:
    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return text_sha256(self.text)


def doc_of(payload: dict[str, Any]) -> Doc:
    """A stored point's payload back into a Doc (its text hash is recomputed from the text)."""
    return Doc(payload["doc_id"], payload["text"], payload.get("metadata") or {})


class CorpusError(Invalid, ValueError):
    """A document crossfade can't store as given (422); a ValueError to its callers."""


MAX_ID_CHARS = 512
MAX_METADATA_DEPTH = 32


def check_storable(value: Any, depth: int = 0) -> None:
    """Refuse what an index payload cannot hold, before anything is written: NaN and Infinity
    (which Python's JSON parsers accept), integers past 64 bits, lone surrogates, unbounded
    nesting. The engine would otherwise fail halfway through a dual write."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ValueError("strings must be valid unicode (no lone surrogates)") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_storable(k, depth + 1)
            check_storable(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_storable(v, depth + 1)


def parse_doc(obj: Any, where: str = "document") -> Doc:
    """One JSON object -> Doc, with a message naming what is wrong."""
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object")
    raw_id = obj.get("_id", obj.get("id"))
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id) == "":
        raise CorpusError(f"{where}: needs a non-empty string or integer 'id' (or BEIR '_id')")
    text = obj.get("text")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: 'text' must be a string")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise CorpusError(f"{where}: 'title' must be a string")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise CorpusError(f"{where}: 'metadata' must be an object")
    if title:
        meta = {**meta, "title": title}
        text = f"{title}\n{text}"
    if not text.strip():
        raise CorpusError(f"{where}: empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise CorpusError(f"{where}: text longer than {MAX_TEXT_CHARS} characters")
    if len(str(raw_id)) > MAX_ID_CHARS:
        raise CorpusError(f"{where}: id longer than {MAX_ID_CHARS} characters")
    for name, value in (("id", raw_id), ("text", text), ("metadata", meta)):
        try:
            check_storable(value)
        except ValueError as e:
            raise CorpusError(f"{where}: '{name}': {e}") from None
    return Doc(str(raw_id), text, meta)
