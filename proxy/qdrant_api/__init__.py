"""Qdrant's REST query API, taking text, as an unmodified qdrant-client app speaks it
(`QdrantClient(url=<proxy>, cloud_inference=True)`). Pure translation, no I/O:

    layout   the app's point ids and payload layout <-> crossfade's doc ids, text, metadata
    filters  Qdrant's filter language -> crossfade's filter (refusing what it can't map)
    queries  a query request -> the text to search (or the raw vector), limit, offset, ...
    answers  Qdrant's response and error shapes

The routes are in proxy/api/qdrant.py.
"""

from proxy.errors import BadRequest


class Unsupported(BadRequest, ValueError):
    """A request crossfade can't serve as Qdrant would: answered 400, naming what (in
    Qdrant's words: "Bad request: ...")."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Bad request: {message}")
