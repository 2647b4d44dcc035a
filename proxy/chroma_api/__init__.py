"""Chroma's HTTP API (v2), as an unmodified chromadb `HttpClient` app speaks it (chromadb 1.x:
`/api/v2/tenants/{t}/databases/{d}/collections/{id}/get|query|add|upsert|update|delete|count`).
Pure translation, no I/O:

    collection  the one collection served (name, id, tenant, database) and Chroma's not-founds
    bodies      request bodies parsed and bounded (embeddings as JSON floats or base64)
    where       Chroma's `where` -> crossfade's filter (refusing what it can't map)
    records     a write's records -> crossfade documents (add / upsert / update semantics)
    answers     Chroma's response and error shapes, and what a query's distances are

The routes are in proxy/api/chroma.py.
"""

from proxy.errors import BadRequest


class ChromaRefusal(BadRequest, ValueError):
    """A request crossfade can't serve as Chroma would: 400, answered as Chroma's
    InvalidArgumentError (chromadb raises its own InvalidArgumentError on it)."""
