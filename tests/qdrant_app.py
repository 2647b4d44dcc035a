"""An application written only against qdrant-client's public API, as teams write them: it
searches its collection with a filter and in a batch, scrolls, counts and fetches points by
id, upserts and deletes. It knows nothing of crossfade. The tests run it unchanged against
crossfade (`QdrantClient(url=<proxy>, cloud_inference=True)`, queries as Documents) and
against qdrant-client's local mode holding the same collection (queries embedded locally).

The collection is LangChain's layout: UUID ids, `page_content` and a `metadata` object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qdrant_client import QdrantClient, models

Embed = Callable[[str], Any]  # text -> what the app sends as a vector (a Document, or floats)


@dataclass
class AppRun:
    top10: list[list[str]] = field(default_factory=list)
    filtered: list[models.ScoredPoint] = field(default_factory=list)
    batch: list[models.QueryResponse] = field(default_factory=list)
    scrolled: list[models.Record] = field(default_factory=list)
    pages: int = 0
    counted: int = 0
    counted_all: int = 0
    fetched: list[models.Record] = field(default_factory=list)
    after_upsert: list[models.Record] = field(default_factory=list)
    after_delete: list[models.Record] = field(default_factory=list)
    counted_after: int = 0


def topic_filter(topic: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key="metadata.topic", match=models.MatchValue(value=topic))]
    )


def run_app(
    client: QdrantClient,
    collection: str,
    embed: Embed,
    questions: Sequence[str],
    topic: str,
    fetch_ids: Sequence[str],
    new_point: tuple[str, str, dict[str, Any]],
    delete_id: str,
) -> AppRun:
    out = AppRun()
    assert client.collection_exists(collection)
    for q in questions:
        res = client.query_points(collection, query=embed(q), limit=10, with_payload=False)
        out.top10.append([str(p.id) for p in res.points])
    out.filtered = client.query_points(
        collection, query=embed(questions[0]), query_filter=topic_filter(topic), limit=10
    ).points
    out.batch = client.query_batch_points(
        collection,
        [
            models.QueryRequest(query=embed(q), filter=topic_filter(topic), limit=3)
            for q in questions[:3]
        ],
    )
    offset = None
    while True:  # pages of 2, to walk next_page_offset
        page, offset = client.scroll(
            collection, scroll_filter=topic_filter(topic), limit=2, offset=offset
        )
        out.scrolled += page
        out.pages += 1
        if offset is None:
            break
    out.counted = client.count(collection, count_filter=topic_filter(topic)).count
    out.counted_all = client.count(collection).count
    out.fetched = client.retrieve(collection, ids=list(fetch_ids))
    pid, text, payload = new_point
    client.upsert(collection, [models.PointStruct(id=pid, vector=embed(text), payload=payload)])
    out.after_upsert = client.retrieve(collection, ids=[pid])
    client.delete(collection, points_selector=models.PointIdsList(points=[delete_id]))
    out.after_delete = client.retrieve(collection, ids=[delete_id])
    out.counted_after = client.count(collection).count
    return out
