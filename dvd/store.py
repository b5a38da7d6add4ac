"""Bounded in-memory embedding store: a vision replica keeps the blobs it encoded here
until a language replica pulls them. Evicts least-recently-used entries past a byte cap
and drops entries older than their TTL."""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from dvd.types import EmbeddingRef


class StoreUnavailable(Exception):
    """A shared store (Redis) could not be reached or answered with an error. Defined here, beside
    the in-process store, so code that only catches it needs no Redis client installed."""


def tokens_match(issued: str, presented: str) -> bool:
    """Constant-time check of the access token a reader presents against the one its ref was
    issued with: a computed content key alone reads nothing."""
    return hmac.compare_digest(issued.encode(), presented.encode())


@dataclass
class _Entry:
    ref: EmbeddingRef
    blob: bytes
    expires_at: float


class MemoryStore:
    """Thread-safe LRU + TTL store of (EmbeddingRef, blob) by content key."""

    def __init__(self, max_bytes: int, ttl_s: float, clock=time.monotonic) -> None:
        if max_bytes <= 0 or ttl_s <= 0:
            raise ValueError("max_bytes and ttl_s must be positive")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._num_bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def live_bytes(self) -> int:
        """Drop every expired entry, then the bytes still held (what a metrics scrape reports)."""
        now = self._clock()
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
                self._pop(key)
            return self._num_bytes

    def put(self, ref: EmbeddingRef, blob: bytes) -> bool:
        """Store a blob; False when it alone is larger than the cap (not stored)."""
        if len(blob) > self.max_bytes:
            return False
        with self._lock:
            self._pop(ref.key)
            self._entries[ref.key] = _Entry(ref, blob, self._clock() + self.ttl_s)
            self._num_bytes += len(blob)
            while self._num_bytes > self.max_bytes:
                self._pop(next(iter(self._entries)))
                self.evictions += 1
        return True

    def get(self, key: str) -> tuple[EmbeddingRef, bytes] | None:
        """The entry for `key`, refreshed as most recently used; None if absent or expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.expires_at <= self._clock():
                if entry is not None:
                    self._pop(key)
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.ref, entry.blob

    def get_with_token(self, key: str, token: str) -> tuple[EmbeddingRef, bytes] | None:
        """As `get`, but only for the token its ref was issued with (None otherwise: no oracle)."""
        entry = self.get(key)
        return entry if entry is not None and tokens_match(entry[0].access_token, token) else None

    def _pop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._num_bytes -= len(entry.blob)
