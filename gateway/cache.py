"""The gateway's view of the embedding cache: content key -> EmbeddingRef. A hit means the
embeddings already sit in a store the language pool can read, so the vision pool is skipped
entirely. Local memory first (recent refs this gateway saw, LRU with a TTL), then the shared
Redis when there is one."""

from __future__ import annotations

import logging
import time

from cachetools import TTLCache

from dvd.redis_store import RedisStore, StoreUnavailable
from dvd.types import EmbeddingRef

log = logging.getLogger(__name__)


class RefCache:
    """Content key -> EmbeddingRef, answered from memory, else from Redis (which is optional)."""

    def __init__(self, ttl_s: float, max_entries: int, redis: RedisStore | None = None, clock=time.monotonic) -> None:
        # TTLCache: entries expire ttl_s after they were stored; past max_entries the least
        # recently used goes first. A Redis hit is stored again, so it lives ttl_s from then.
        self._refs: TTLCache[str, EmbeddingRef] = TTLCache(max_entries, ttl_s, timer=clock)
        self._redis = redis

    @property
    def shared(self) -> bool:
        """Whether the cache is shared across gateways and replicas (Redis), not just this process."""
        return self._redis is not None

    async def get(self, key: str) -> EmbeddingRef | None:
        ref = self._refs.get(key)
        if ref is None and self._redis is not None:
            try:
                ref = await self._redis.get_ref(key)
            except StoreUnavailable as exc:
                log.warning("embedding cache lookup skipped: %s", exc)
            if ref is not None:
                self.remember(key, ref)
        return ref

    def remember(self, key: str, ref: EmbeddingRef) -> None:
        self._refs[key] = ref

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
