"""The public filter language of `/search`: a small, validated subset of Qdrant's filter.

Keys name fields of a document's `metadata` (the proxy stores them under `metadata.`), so a
client can never filter on, or learn about, the proxy's own bookkeeping fields.

Every request body of the API (these filters included) derives from `StrictBody`: unknown
fields are refused and JSON values are taken as the types they are sent as.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# Dotted identifiers; `[]` after a segment walks every element of an array (Qdrant's paths).
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\[\])?(\.[A-Za-z_][A-Za-z0-9_\-]*(\[\])?)*$")
# Qdrant matches 64-bit integers: a larger one is refused here (422), not by the index (500).
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


def _unicode(s: str) -> str:
    if not s.isascii():
        try:
            s.encode()
        except UnicodeEncodeError:
            raise ValueError("strings must be valid unicode (no lone surrogates)") from None
    return s


class StrictBody(BaseModel):
    """One rule for the whole API: `"k": "3"` is a string, not 3, and `"force": "true"` is not
    true; both are refused (422) rather than guessed at. Enum fields (modes) take their values
    as strings, which is how JSON spells them."""

    model_config = ConfigDict(extra="forbid", strict=True)


# A lone surrogate (JSON "\ud800") is a Python str that no index can take.
Text = Annotated[str, AfterValidator(_unicode)]
Scalar = Text | Int64 | bool
# Size bounds: at most this many conditions in each of must/should/must_not (and no nesting:
# a condition is a key with one match or range), at most MAX_VALUES values in any/except.
MAX_CONDITIONS = 32
MAX_VALUES = 1000


class Match(StrictBody):
    value: Scalar | None = None
    any: list[Scalar] | None = Field(None, min_length=1, max_length=MAX_VALUES)
    except_: list[Scalar] | None = Field(None, alias="except", min_length=1, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _exactly_one(self) -> Match:
        if sum(x is not None for x in (self.value, self.any, self.except_)) != 1:
            raise ValueError("match needs exactly one of 'value', 'any', 'except'")
        return self


class Range(StrictBody):
    # NaN and Infinity (which FastAPI's JSON parser accepts) bound nothing: refused.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Range:
        if all(x is None for x in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("range needs at least one of gt, gte, lt, lte")
        return self


class Condition(StrictBody):
    key: str = Field(min_length=1, max_length=128)
    match: Match | None = None
    range: Range | None = None

    @model_validator(mode="after")
    def _valid(self) -> Condition:
        if not KEY_RE.match(self.key):
            raise ValueError(f"bad filter key {self.key!r}: use dotted identifiers")
        if (self.match is None) == (self.range is None):
            raise ValueError("a condition needs exactly one of 'match' or 'range'")
        return self

    @property
    def field(self) -> str:
        return f"metadata.{self.key}"


class Filter(StrictBody):
    must: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    should: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    must_not: list[Condition] = Field(default_factory=list, max_length=MAX_CONDITIONS)

    def fields(self) -> list[str]:
        """The payload paths the filter's conditions name, each once, in order."""
        return list(dict.fromkeys(c.field for c in (*self.must, *self.should, *self.must_not)))

    @model_validator(mode="after")
    def _not_empty(self) -> Filter:
        if not (self.must or self.should or self.must_not):
            raise ValueError("filter needs at least one of must, should, must_not")
        return self


# --- the richer filter Qdrant's REST API maps to (proxy/qdrant_api/filters.py) ------------
# Not part of /search's language: nested boolean clauses, emptiness and point ids too. The
# stores translate a `FilterTree` as they translate a `Filter` (whose clauses are all
# Conditions), each mapping keys and ids to its own layout.


@dataclass(frozen=True)
class IsEmpty:
    """The metadata key is missing, null or an empty array."""

    key: str

    @property
    def field(self) -> str:
        return f"metadata.{self.key}"


@dataclass(frozen=True)
class HasId:
    doc_ids: tuple[str, ...]


Clause = Union[Condition, IsEmpty, HasId, "FilterTree"]


@dataclass(frozen=True)
class FilterTree:
    must: tuple[Clause, ...] = ()
    should: tuple[Clause, ...] = ()
    must_not: tuple[Clause, ...] = ()
