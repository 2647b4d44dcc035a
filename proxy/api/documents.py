"""Document writes: PUT /documents (dual-written upserts), DELETE /documents/{doc_id} (an id
may hold `/`). Both need a read-write key or the admin key (proxy.api.middleware.Gate)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter
from pydantic import Field
from starlette.convertors import PathConvertor, register_url_convertor

from proxy.api.services import Svc
from proxy.app_vectors import Model, check_app_vectors
from proxy.document import MAX_TEXT_CHARS, Doc, parse_doc
from proxy.errors import Invalid
from proxy.filters import StrictBody
from proxy.remembered import Remembered
from proxy.runtime import Runtime
from proxy.store import VectorStore
from proxy.writes import delete_documents, upsert_documents

router = APIRouter()


class DocumentIn(StrictBody):
    id: str | int = Field(description="Document id.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(StrictBody):
    documents: list[DocumentIn] = Field(min_length=1, max_length=256)


T = TypeVar("T")


async def _on_write_pool(rt: Runtime, fn: Callable[..., T], *args: Any) -> T:
    """Run a document write on the write threads (never the pool searches run on). Its
    refusals carry their status (proxy.errors): 422 an id an adopted collection can't key a
    point by (CorpusError), 409 a drifted model (ModelDrift, the bilingual-write guard), 503
    an index or model down (with Retry-After while the journal retries a batch: WritePending,
    JournalBehind)."""
    return await asyncio.get_running_loop().run_in_executor(rt.write_pool, fn, rt, *args)


async def write_documents(rt: Runtime, docs: list[Doc]) -> list[str]:
    """Upsert `docs` in every live index (dual write); returns the indexes written."""
    if len({d.doc_id for d in docs}) != len(docs):
        raise Invalid("duplicate ids in one batch")
    return await _on_write_pool(rt, upsert_documents, docs)


async def write_app_vectors(
    rt: Runtime,
    docs: list[Doc],
    vectors: list[np.ndarray],
    recall: Callable[[np.ndarray], Remembered | None],
    where: list[str],
) -> list[str]:
    """Upsert `docs` that came with the app's own vectors: checked to be the app's model's
    (409 otherwise, nothing written), then dual-written, that model's index with the app's
    vectors, every other with its own model's."""
    if len({d.doc_id for d in docs}) != len(docs):
        raise Invalid("duplicate ids in one batch")

    def run(rt: Runtime) -> list[str]:
        side = rt.settings.vector_clients.app_model
        m = rt.model(side)
        m.configure_thread()
        model = Model(side, m.fingerprint.name, m.fingerprint.dim, m.embed_documents)
        min_cosine = rt.settings.vector_clients.write_min_cosine
        check_app_vectors([d.text for d in docs], vectors, model, recall, min_cosine, where)
        return upsert_documents(rt, docs, {side: np.stack(vectors)})

    return await _on_write_pool(rt, run)


async def erase_documents(rt: Runtime, doc_ids: list[str]) -> dict[str, int]:
    """Delete `doc_ids` from every live index; how many existed, per index."""
    return await _on_write_pool(rt, delete_documents, doc_ids)


async def ids_matching(store: VectorStore, flt: Any, bound: int) -> list[str]:
    """The doc ids `flt` matches in `store`, in its order, paged, up to one past `bound` (a
    delete by filter refuses more than `bound` before deleting anything)."""
    ids: list[str] = []
    start = None
    while len(ids) <= bound:
        page = min(256, bound + 1 - len(ids))
        views, start = await asyncio.to_thread(store.page, flt, page, start, ())
        ids += [v["doc_id"] for v in views]
        if start is None:
            break
    return ids


@router.put("/documents", responses={400: {}, 413: {}, 422: {}, 503: {}})
async def put_documents(sv: Svc, body: DocumentsIn) -> Any:
    docs = [parse_doc(d.model_dump(), f"documents[{i}]") for i, d in enumerate(body.documents)]
    sides = await write_documents(sv.rt, docs)  # a CorpusError is a 422, as any refusal
    return {"upserted": len(docs), "indexes": sides}


class DocIdConvertor(PathConvertor):
    """Any doc id, `/` and a trailing newline included (the `path` convertor's `.*` stops
    before a final newline: "a\\n" would have deleted "a")."""

    regex = r"[\s\S]+"


register_url_convertor("doc_id", DocIdConvertor())


@router.delete("/documents/{doc_id:doc_id}", responses={503: {}})
async def delete_document(sv: Svc, doc_id: str) -> Any:
    existed = await erase_documents(sv.rt, [doc_id])
    return {"deleted": doc_id, "existed": existed}
