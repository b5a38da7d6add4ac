"""The gateway's view of the embedding cache: content key -> EmbeddingRef. A hit means the
embeddings already sit in a store the language pool can read, so the vision pool is skipped
entirely. Local memory first (recent refs this gateway saw), then the shared Redis."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from dvd.redis_store import RedisStore, StoreUnavailable
from dvd.types import EmbeddingRef

log = logging.getLogger(__name__)


class RefCache:
    def __init__(self, ttl_s: float, max_entries: int, redis: RedisStore | None = None, clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.redis = redis
        self._clock = clock
        self._refs: OrderedDict[str, tuple[EmbeddingRef, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> EmbeddingRef | None:
        ref = self._local(key)
        if ref is None and self.redis is not None:
            try:
                ref = await self.redis.get_ref(key)
            except StoreUnavailable as exc:
                log.warning("embedding cache lookup skipped: %s", exc)
        if ref is None:
            self.misses += 1
            return None
        self.hits += 1
        self.remember(key, ref)
        return ref

    def remember(self, key: str, ref: EmbeddingRef) -> None:
        self._refs[key] = (ref, self._clock() + self.ttl_s)
        self._refs.move_to_end(key)
        while len(self._refs) > self.max_entries:
            self._refs.popitem(last=False)

    def forget(self, key: str) -> None:
        self._refs.pop(key, None)

    def _local(self, key: str) -> EmbeddingRef | None:
        entry = self._refs.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._refs[key]
            return None
        self._refs.move_to_end(key)
        return entry[0]
