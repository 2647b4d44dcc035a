"""A Qdrant query request as crossfade runs it: the text of its Document (bare, under
`nearest`, or in prefetches fused by rrf/dbsf), or the raw vector it carries; the filter,
limit, offset, score threshold and payload selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from qdrant_client.http import models as qm

from proxy.filters import FilterTree
from proxy.qdrant_api import Unsupported
from proxy.qdrant_api.filters import to_filter
from proxy.qdrant_api.layout import AppLayout

DEFAULT_LIMIT = 10  # Qdrant's
NOT_TEXT = {
    qm.RecommendQuery: "recommend",
    qm.DiscoverQuery: "discover",
    qm.ContextQuery: "context",
    qm.OrderByQuery: "order_by",
    qm.FormulaQuery: "formula",
    qm.SampleQuery: "sample",
    qm.RelevanceFeedbackQuery: "relevance_feedback",
}
SEND_A_DOCUMENT = (
    "send the query as a Document ({'text': ..., 'model': ...}; qdrant-client: "
    "models.Document with cloud_inference=True): crossfade embeds the text with every model "
    "of the migration"
)


@dataclass(frozen=True)
class RawVector:
    vector: list[float]
    using: str | None


@dataclass(frozen=True)
class Query:
    text: str | None  # set: a Document query
    raw: RawVector | None  # set: a vector query (config: refuse or pass through)
    filter: FilterTree | None
    limit: int
    offset: int
    score_threshold: float | None
    with_payload: Any


def parse_query(req: qm.QueryRequest, layout: AppLayout, max_limit: int) -> Query:
    if req.lookup_from is not None:
        raise Unsupported("'lookup_from' is not supported")
    if req.shard_key is not None:
        raise Unsupported("'shard_key' is not supported")
    refuse_vectors(req.with_vector)
    limit = DEFAULT_LIMIT if req.limit is None else req.limit
    offset = req.offset or 0
    if limit < 1 or offset < 0:
        raise Unsupported("'limit' must be at least 1 and 'offset' not negative")
    if limit + offset > max_limit:
        raise Unsupported(f"offset + limit over {max_limit} (qdrant_api.max_limit)")
    flt = req.filter
    text, raw = _query(req.query, req.using)
    if req.prefetch is not None:
        if text is not None or raw is not None or not _is_fusion(req.query):
            raise Unsupported("'prefetch' is served with a fusion query ({'fusion': 'rrf'}) only")
        text, prefetch_filter = _prefetch(req.prefetch)
        flt = _both(flt, prefetch_filter)
    elif text is None and raw is None:
        raise Unsupported(f"a query is needed: {SEND_A_DOCUMENT}")
    return Query(
        text=text,
        raw=raw,
        filter=to_filter(flt, layout),
        limit=limit,
        offset=offset,
        score_threshold=req.score_threshold,
        with_payload=True if req.with_payload is None else req.with_payload,
    )


def refuse_vectors(with_vector: Any) -> None:
    if with_vector not in (None, False, []):
        raise Unsupported(
            "'with_vector' is not served: the vectors are the migration's models', not the app's"
        )


def _is_fusion(q: Any) -> bool:
    return isinstance(q, (qm.FusionQuery, qm.RrfQuery))


def _query(q: Any, using: str | None) -> tuple[str | None, RawVector | None]:
    """(text, None) for a Document, (None, vector) for a dense vector, (None, None) for a
    fusion (or none); anything else refused by name."""
    if q is None or _is_fusion(q):
        return None, None
    if isinstance(q, qm.NearestQuery):
        if q.mmr is not None:
            raise Unsupported("query 'nearest' with 'mmr' is not supported")
        q = q.nearest
    if isinstance(q, qm.Document):
        if not q.text.strip():
            raise Unsupported("the Document's text is blank")
        return q.text, None
    if isinstance(q, list) and q and all(isinstance(x, (int, float)) for x in q):
        vector = [float(x) for x in q]
        with np.errstate(over="ignore"):
            finite = np.isfinite(np.asarray(vector, dtype=np.float32)).all()
        if not finite:  # JSON's NaN/Infinity literals, or past float32's range
            raise Unsupported("the query vector holds NaN, infinite or out-of-range values")
        return None, RawVector(vector, using)
    name = NOT_TEXT.get(type(q))
    if name is None:
        name = {
            qm.SparseVector: "a sparse vector",
            qm.Image: "an Image",
            qm.InferenceObject: "an InferenceObject",
        }.get(type(q), "a point id or multi-vector" if not isinstance(q, list) else "a vector")
    raise Unsupported(f"query by {name} is not supported: {SEND_A_DOCUMENT}")


def _prefetch(prefetch: Any) -> tuple[str, qm.Filter | None]:
    """Prefetches of Documents (the hybrid pattern: one text through several vectors, then
    fused): crossfade's own fusion runs instead, on that one text."""
    items = prefetch if isinstance(prefetch, list) else [prefetch]
    texts, filters = set(), []
    for p in items:
        if p.prefetch is not None:
            raise Unsupported("nested 'prefetch' is not supported")
        if p.lookup_from is not None:
            raise Unsupported("'lookup_from' is not supported")
        text, raw = _query(p.query, p.using)
        if text is None:
            raise Unsupported(f"each prefetch needs a Document query: {SEND_A_DOCUMENT}")
        texts.add(text)
        filters.append(p.filter)
    if len(texts) != 1:
        raise Unsupported("prefetches with different texts are not supported: send one text")
    if any(f != filters[0] for f in filters):
        raise Unsupported("prefetches with different filters are not supported")
    return texts.pop(), filters[0]


def _both(a: qm.Filter | None, b: qm.Filter | None) -> qm.Filter | None:
    if a is None or b is None:
        return a or b
    return qm.Filter(must=[a, b])


def select_payload(payload: dict[str, Any], selector: Any) -> dict[str, Any] | None:
    """Qdrant's `with_payload`: true, false, a list of keys, {include: [...]}, {exclude: [...]}
    (dotted keys select inside objects)."""
    if selector is True:
        return payload
    if selector is False or selector is None:
        return None
    if isinstance(selector, list):
        return _include(payload, selector)
    if isinstance(selector, qm.PayloadSelectorInclude):
        return _include(payload, selector.include)
    if isinstance(selector, qm.PayloadSelectorExclude):
        out = dict(payload)
        for key in selector.exclude:
            _drop(out, key.split("."))
        return out
    raise Unsupported("'with_payload' must be a boolean, a list of keys, include or exclude")


def _include(payload: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        parts = key.split(".")
        src: Any = payload
        for p in parts:
            if not isinstance(src, dict) or p not in src:
                break
            src = src[p]
        else:
            dst = out
            for p in parts[:-1]:
                dst = dst.setdefault(p, {})
            dst[parts[-1]] = src
    return out


def _drop(obj: dict[str, Any], parts: list[str]) -> None:
    if len(parts) == 1:
        obj.pop(parts[0], None)
    elif isinstance(obj.get(parts[0]), dict):
        obj[parts[0]] = dict(obj[parts[0]])
        _drop(obj[parts[0]], parts[1:])
