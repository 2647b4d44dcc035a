"""Chroma's metadata filter (`where`) mapped to crossfade's filter tree: `{key: value}`
(equality), `{key: {$eq|$ne|$gt|$gte|$lt|$lte|$in|$nin|$contains|$not_contains: operand}}`,
`$and` and `$or` of those, nested. Anything else is refused naming it (400), never dropped: a
dropped condition would widen results. Keys are metadata keys of letters, digits, `_` and `-`
(a dotted key would name a nested path in crossfade's filter; `#document` is full-text).

Meanings as crossfade's filter has them, which differ from Chroma's on arrays: an equality
(`$eq`, `$in`) also matches an array holding the value, and `$contains` also matches a scalar
equal to it (Chroma matches arrays only with `$contains`, scalars only with `$eq`). `$ne` and
`$nin` match records without the key, as in Chroma. A float operand of `$eq`/`$in` compares
as a number (a range of one point)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from proxy.chroma_api import ChromaRefusal
from proxy.filters import MAX_VALUES, Clause, Condition, FilterTree, HasId

MAX_DEPTH = 8
MAX_CLAUSES = 256
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,127}$")
COMPARE = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
NEGATED = {"$ne": "$eq", "$nin": "$in", "$not_contains": "$contains"}
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains",
             "$not_contains")  # fmt: skip


def invalid(why: str) -> ChromaRefusal:
    return ChromaRefusal(f"Invalid where clause: {why}")


def to_filter(where: Any, ids: list[str] | None = None) -> FilterTree | None:
    """The filter of a request's `where` and `ids` (both must hold); None for neither."""
    clauses: list[Clause] = []
    if ids is not None:
        clauses.append(HasId(tuple(dict.fromkeys(ids))))
    if where is not None:
        clauses.append(_expression(where, 0, [0]))
    return FilterTree(must=tuple(clauses)) if clauses else None


def _expression(w: Any, depth: int, count: list[int]) -> Clause:
    if depth >= MAX_DEPTH:
        raise invalid(f"nested deeper than {MAX_DEPTH} levels")
    count[0] += 1
    if count[0] > MAX_CLAUSES:
        raise invalid(f"more than {MAX_CLAUSES} expressions")
    if not isinstance(w, dict) or len(w) != 1:
        raise invalid(f"an expression is an object with exactly one key, not {_brief(w)}")
    ((key, value),) = w.items()
    if key in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            raise invalid(f"{key} takes a non-empty list of expressions")
        parts = tuple(_expression(x, depth + 1, count) for x in value)
        return FilterTree(must=parts) if key == "$and" else FilterTree(should=parts)
    if key.startswith("$"):
        raise invalid(f"{key!r} is not an operator crossfade maps ($and, $or, or a metadata key)")
    if key.startswith("#"):
        raise invalid(f"key {key!r}: conditions on the document are not supported by crossfade")
    if not NAME_RE.match(key):
        raise invalid(
            f"metadata key {key!r} can't be filtered through crossfade (keys of letters, digits, "
            "'_' and '-', starting with a letter or '_')"
        )
    if isinstance(value, dict):
        if len(value) != 1:
            raise invalid(f"key {key!r}: an operator expression has exactly one operator")
        ((op, operand),) = value.items()
    else:
        op, operand = "$eq", value
    return _condition(key, op, operand)


def _condition(key: str, op: str, operand: Any) -> Clause:
    if op not in OPERATORS:
        raise invalid(f"key {key!r}: operator {op!r} is not supported ({', '.join(OPERATORS)})")
    if op in NEGATED:
        return FilterTree(must_not=(_condition(key, NEGATED[op], operand),))
    if op in COMPARE:
        if not _number(operand):
            raise invalid(f"key {key!r}: {op} compares numbers, not {_brief(operand)}")
        return _valid(key, {"range": {COMPARE[op]: operand}})
    if op == "$in":
        if not isinstance(operand, list) or not operand:
            raise invalid(f"key {key!r}: $in takes a non-empty list")
        if len(operand) > MAX_VALUES:
            raise invalid(f"key {key!r}: $in takes at most {MAX_VALUES} values")
        if len({_kind(v) for v in operand}) != 1:
            raise invalid(f"key {key!r}: $in values must be of one type")
        if isinstance(operand[0], float):
            return FilterTree(should=tuple(_point(key, v) for v in operand))
        return _valid(key, {"match": {"any": operand}})
    # $eq, $contains: a scalar
    if _kind(operand) is None:
        raise invalid(f"key {key!r}: {op} takes a string, number or boolean, not {_brief(operand)}")
    if isinstance(operand, float):
        return _point(key, operand)
    return _valid(key, {"match": {"value": operand}})


def _point(key: str, value: float) -> Clause:
    return _valid(key, {"range": {"gte": value, "lte": value}})


def _valid(key: str, body: dict[str, Any]) -> Condition:
    try:
        return Condition.model_validate({"key": key, **body})
    except ValidationError as e:
        raise invalid(f"key {key!r}: {e.errors()[0]['msg']}") from None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _kind(v: Any) -> type | None:
    return type(v) if isinstance(v, str | int | float | bool) else None


def _brief(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
