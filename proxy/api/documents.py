"""Document writes: PUT /documents (dual-written upserts), DELETE /documents/{doc_id} (an id
may hold `/`). Both need a read-write key or the admin key (proxy.api.middleware.Gate)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import Field

from proxy.api.errors import error
from proxy.api.services import Svc
from proxy.documents import delete_documents, upsert_documents
from proxy.filters import StrictBody
from proxy.ingest import MAX_TEXT_CHARS, CorpusError, Doc, parse_doc
from proxy.migration.canary import ModelDrift
from proxy.runtime import Runtime

router = APIRouter()


class DocumentIn(StrictBody):
    id: str | int = Field(description="Document id.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(StrictBody):
    documents: list[DocumentIn] = Field(min_length=1, max_length=256)


class WriteRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def write_documents(rt: Runtime, docs: list[Doc]) -> list[str]:
    """Upsert `docs` in every live index (dual write); returns the indexes written. Refusals
    carry their status: 422 bad ids, 409 a drifted model, 503 no index to write."""
    if len({d.doc_id for d in docs}) != len(docs):
        raise WriteRefused(422, "duplicate ids in one batch")
    try:
        return await asyncio.to_thread(upsert_documents, rt, docs)
    except CorpusError as e:  # e.g. an id an adopted collection can't key a point by
        raise WriteRefused(422, str(e)) from e
    except ModelDrift as e:  # the bilingual-write guard: an operator must decide
        raise WriteRefused(409, str(e)) from e
    except RuntimeError as e:
        raise WriteRefused(503, str(e)) from e


@router.put("/documents", responses={400: {}, 413: {}, 422: {}, 503: {}})
async def put_documents(sv: Svc, body: DocumentsIn) -> Any:
    try:
        docs = [parse_doc(d.model_dump(), f"documents[{i}]") for i, d in enumerate(body.documents)]
    except CorpusError as e:
        return error(422, str(e))
    try:
        sides = await write_documents(sv.rt, docs)
    except WriteRefused as e:
        return error(e.status, e.message)
    return {"upserted": len(docs), "indexes": sides}


@router.delete("/documents/{doc_id:path}", responses={503: {}})
async def delete_document(sv: Svc, doc_id: str) -> Any:
    try:
        existed = await asyncio.to_thread(delete_documents, sv.rt, [doc_id])
    except RuntimeError as e:
        return error(503, str(e))
    return {"deleted": doc_id, "existed": existed}
