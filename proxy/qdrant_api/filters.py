"""Qdrant's filter language mapped to crossfade's: must / should / must_not (nested too),
match value / any / except, range, is_empty, has_id, dotted keys (with `[]` for arrays).
Anything else is refused naming it, never dropped: a dropped condition would widen results.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from qdrant_client.http import models as qm

from proxy.filters import Clause, Condition, FilterTree, HasId, IsEmpty
from proxy.qdrant_api import Unsupported
from proxy.qdrant_api.layout import AppLayout

MAX_DEPTH = 8
MAX_CLAUSES = 256

# The condition kinds crossfade can't map, by the name Qdrant's docs give them.
REFUSED_FIELD = ("geo_bounding_box", "geo_radius", "geo_polygon", "values_count", "is_null")
REFUSED_MATCH = {
    qm.MatchText: "match.text",
    qm.MatchTextAny: "match.text_any",
    qm.MatchPhrase: "match.phrase",
    qm.MatchPrefix: "match.prefix",
    qm.MatchSubstring: "match.substring",
}
REFUSED_CONDITION = {
    qm.IsNullCondition: "is_null",
    qm.HasVectorCondition: "has_vector",
    qm.NestedCondition: "nested",
    qm.SliceCondition: "slice",
}


def to_filter(flt: qm.Filter | None, layout: AppLayout) -> FilterTree | None:
    if flt is None:
        return None
    count = [0]
    return _tree(flt, layout, 0, count)


def _tree(flt: qm.Filter, layout: AppLayout, depth: int, count: list[int]) -> FilterTree:
    if depth >= MAX_DEPTH:
        raise Unsupported(f"filter nested deeper than {MAX_DEPTH} levels")
    if flt.min_should is not None:
        raise Unsupported("filter condition 'min_should' is not supported")

    def clauses(cs: Any) -> tuple[Clause, ...]:
        if cs is None:
            return ()
        items = cs if isinstance(cs, list) else [cs]
        count[0] += len(items)
        if count[0] > MAX_CLAUSES:
            raise Unsupported(f"filter with more than {MAX_CLAUSES} conditions")
        return tuple(_clause(c, layout, depth, count) for c in items)

    return FilterTree(clauses(flt.must), clauses(flt.should), clauses(flt.must_not))


def _clause(c: Any, layout: AppLayout, depth: int, count: list[int]) -> Clause:
    if isinstance(c, qm.Filter):
        return _tree(c, layout, depth + 1, count)
    if isinstance(c, qm.HasIdCondition):
        return HasId(tuple(layout.doc_id(i) for i in c.has_id))
    if isinstance(c, qm.IsEmptyCondition):
        return IsEmpty(_key(c.is_empty.key, layout))
    if isinstance(c, qm.FieldCondition):
        return _field(c, layout)
    name = REFUSED_CONDITION.get(type(c), type(c).__name__)
    raise Unsupported(f"filter condition '{name}' is not supported")


def _field(c: qm.FieldCondition, layout: AppLayout) -> Clause:
    for name in REFUSED_FIELD:
        if getattr(c, name) is not None:
            raise Unsupported(f"filter condition '{name}' (key {c.key!r}) is not supported")
    key = _key(c.key, layout)
    given = [n for n in ("match", "range", "is_empty") if getattr(c, n) is not None]
    if len(given) != 1:
        raise Unsupported(f"filter key {c.key!r}: a condition needs one of match, range")
    if c.is_empty is not None:
        return IsEmpty(key) if c.is_empty else FilterTree(must_not=(IsEmpty(key),))
    body: dict[str, Any] = {"key": key}
    if c.match is not None:
        m = c.match
        if type(m) in REFUSED_MATCH:
            raise Unsupported(f"filter condition '{REFUSED_MATCH[type(m)]}' is not supported")
        if isinstance(m, qm.MatchValue):
            body["match"] = {"value": m.value}
        elif isinstance(m, qm.MatchAny):
            body["match"] = {"any": list(m.any)}
        else:
            body["match"] = {"except": list(m.except_)}
    else:
        r = c.range
        if not isinstance(r, qm.Range):
            raise Unsupported("filter condition 'range' on datetimes is not supported")
        body["range"] = {k: v for k, v in r.model_dump().items() if v is not None}
    try:
        return Condition.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        raise Unsupported(f"filter key {c.key!r}: {first['msg']}") from None


def _key(key: str, layout: AppLayout) -> str:
    out = layout.metadata_key(key)
    if not out:
        raise Unsupported(f"filter key {key!r}: name a field inside the metadata")
    return out
