"""Which text a vector crossfade returned from `/v1/embeddings` was made from: the way an app
that embeds through crossfade and then sends vectors (LangChain's and LlamaIndex's Qdrant
stores, Chroma clients) still migrates. When one of those vectors comes back as a query or a
write, `recall` gives its text, and the text is served like any other.

Keyed by a digest of the vector's float32 bytes: a vector sent out as JSON floats or base64
float32 and sent back as JSON floats parses to the same float32 values, so to the same key.
Bounded three ways: at most `max_entries` (least recently used dropped first), each for
`ttl_s` after it was returned, and no text over `max_chars`. Memory only: never logged,
never written to disk (the texts are the app's data). Thread-safe. A leaf: numpy and the
standard library only.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# What one entry costs besides its text, measured roughly: the digest (a 16-byte bytes
# object), the Remembered instance, the (expiry, entry) tuple, the OrderedDict's node and the
# expiry queue's item. The texts are counted by their own size.
ENTRY_OVERHEAD_BYTES = 400


@dataclass(frozen=True)
class Remembered:
    text: str
    side: str  # "old" | "new": whose model made the vector
    fingerprint: str  # that model's fingerprint id


def vector_key(vector: Sequence[float] | np.ndarray) -> bytes:
    """The digest of a vector's float32 bytes (JSON floats of a float32 value parse back to
    that value; a float64 array is rounded to float32 first)."""
    data = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).ravel())
    return hashlib.blake2b(data.tobytes(), digest_size=16).digest()


class RememberedTexts:
    """vector -> (text, side, fingerprint), bounded by count, age and text length."""

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        max_chars: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries, self.ttl_s, self.max_chars = max_entries, ttl_s, max_chars
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (expires at, entry), least recently used first.
        self._entries: OrderedDict[bytes, tuple[float, Remembered]] = OrderedDict()
        # (expires at, key) in the order remembered: the same order as expiry (one ttl for
        # all, a monotonic clock). An item is stale once its key was remembered again later.
        self._expiry: deque[tuple[float, bytes]] = deque()
        self._bytes = 0
        self.hits = self.misses = 0

    def remember(
        self, side: str, fingerprint: str, texts: Sequence[str], vectors: np.ndarray
    ) -> None:
        """Remember that `vectors[i]` (made by `side`'s model, `fingerprint`) is `texts[i]`;
        texts over `max_chars` are skipped."""
        if self.max_entries <= 0:
            return
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts for {len(vectors)} vectors")
        keep = [(vector_key(v), t) for t, v in zip(texts, vectors, strict=True)]
        keep = [(k, t) for k, t in keep if len(t) <= self.max_chars]
        with self._lock:
            now = self._clock()
            self._expire(now)
            expires = now + self.ttl_s
            for key, text in keep:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= self._size(old[1])
                entry = Remembered(text, side, fingerprint)
                self._entries[key] = (expires, entry)
                self._bytes += self._size(entry)
                self._expiry.append((expires, key))
            while len(self._entries) > self.max_entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= self._size(dropped)
            if len(self._expiry) > 2 * len(self._entries) + 1024:
                self._compact()

    def recall(self, vector: Sequence[float] | np.ndarray) -> Remembered | None:
        """The text `vector` was made from, if crossfade returned it within `ttl_s` and still
        remembers it (a hit counts as a use, for the LRU)."""
        key = vector_key(vector)
        with self._lock:
            now = self._clock()
            self._expire(now)
            found = self._entries.get(key)
            if found is None or found[0] <= now:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found[1]

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._expire(self._clock())
            return {
                "entries": len(self._entries),
                "capacity": self.max_entries,
                "hits": self.hits,
                "misses": self.misses,
                "approx_bytes": self._bytes,
            }

    # -- under the lock ---------------------------------------------------------------------

    @staticmethod
    def _size(entry: Remembered) -> int:
        return sys.getsizeof(entry.text) + ENTRY_OVERHEAD_BYTES

    def _expire(self, now: float) -> None:
        """Drop every entry whose time is up (the queue's front, in expiry order)."""
        while self._expiry and self._expiry[0][0] <= now:
            expires, key = self._expiry.popleft()
            found = self._entries.get(key)
            if found is not None and found[0] == expires:  # not remembered again since
                del self._entries[key]
                self._bytes -= self._size(found[1])

    def _compact(self) -> None:
        """Rebuild the expiry queue from the live entries (keys remembered many times within
        `ttl_s` left stale items behind): it stays within twice the entries."""
        live = sorted((expires, key) for key, (expires, _) in self._entries.items())
        self._expiry = deque(live)
