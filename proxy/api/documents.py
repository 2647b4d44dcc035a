"""Document writes: PUT /documents (dual-written upserts), DELETE /documents/{doc_id} (an id
may hold `/`). Both need a read-write key or the admin key (proxy.api.middleware.Gate)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter
from pydantic import Field
from starlette.convertors import PathConvertor, register_url_convertor

from proxy.api.errors import error
from proxy.api.services import Svc
from proxy.document import MAX_TEXT_CHARS, CorpusError, Doc, parse_doc
from proxy.filters import StrictBody
from proxy.migration.canary import ModelDrift
from proxy.runtime import Runtime
from proxy.writes import JournalBehind, WritePending, delete_documents, upsert_documents

router = APIRouter()


class DocumentIn(StrictBody):
    id: str | int = Field(description="Document id.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(StrictBody):
    documents: list[DocumentIn] = Field(min_length=1, max_length=256)


class WriteRefused(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


T = TypeVar("T")


async def _on_write_pool(rt: Runtime, fn: Callable[..., T], *args: Any) -> T:
    """Run a document write on the write threads (never the pool searches run on); refusals
    carry their status: 422 bad ids, 409 a drifted model, 503 an index or model down (with
    Retry-After when the journal is retrying an earlier batch)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(rt.write_pool, fn, rt, *args)
    except CorpusError as e:  # e.g. an id an adopted collection can't key a point by
        raise WriteRefused(422, str(e)) from e
    except ModelDrift as e:  # the bilingual-write guard: an operator must decide
        raise WriteRefused(409, str(e)) from e
    except JournalBehind as e:
        raise WriteRefused(503, str(e), e.retry_in_s) from e
    except WritePending as e:
        raise WriteRefused(503, str(e), rt.settings.writes.retry_base_s) from e
    except RuntimeError as e:
        raise WriteRefused(503, str(e)) from e


async def write_documents(rt: Runtime, docs: list[Doc]) -> list[str]:
    """Upsert `docs` in every live index (dual write); returns the indexes written."""
    if len({d.doc_id for d in docs}) != len(docs):
        raise WriteRefused(422, "duplicate ids in one batch")
    return await _on_write_pool(rt, upsert_documents, docs)


async def erase_documents(rt: Runtime, doc_ids: list[str]) -> dict[str, int]:
    """Delete `doc_ids` from every live index; how many existed, per index."""
    return await _on_write_pool(rt, delete_documents, doc_ids)


@router.put("/documents", responses={400: {}, 413: {}, 422: {}, 503: {}})
async def put_documents(sv: Svc, body: DocumentsIn) -> Any:
    try:
        docs = [parse_doc(d.model_dump(), f"documents[{i}]") for i, d in enumerate(body.documents)]
    except CorpusError as e:
        return error(422, str(e))
    try:
        sides = await write_documents(sv.rt, docs)
    except WriteRefused as e:
        return error(e.status, e.message, headers=e.headers())
    return {"upserted": len(docs), "indexes": sides}


class DocIdConvertor(PathConvertor):
    """Any doc id, `/` and a trailing newline included (the `path` convertor's `.*` stops
    before a final newline: "a\\n" would have deleted "a")."""

    regex = r"[\s\S]+"


register_url_convertor("doc_id", DocIdConvertor())


@router.delete("/documents/{doc_id:doc_id}", responses={503: {}})
async def delete_document(sv: Svc, doc_id: str) -> Any:
    try:
        existed = await erase_documents(sv.rt, [doc_id])
    except WriteRefused as e:
        return error(e.status, e.message, headers=e.headers())
    return {"deleted": doc_id, "existed": existed}
