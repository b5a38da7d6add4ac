"""Embedding blobs in Redis, shared by every replica: one hash per content key holding the
serialised EmbeddingRef and the blob in chunks (so no single value is huge), with a TTL.

Every call has a short timeout: Redis is an accelerator, never a dependency. Callers treat
`StoreUnavailable` as "fall back to the vision replica's own memory". A Redis that keeps failing
or hangs trips a circuit breaker: from then on calls fail at once (no socket touched) until a
background probe finds it answering again."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dvd import convert
from dvd.breaker import CircuitBreaker
from dvd.store import StoreUnavailable, tokens_match
from dvd.tls import TlsFiles, redis_tls_kwargs
from dvd.types import EmbeddingRef
from protos.v1 import common_pb2

log = logging.getLogger(__name__)

_PREFIX = "dvd:emb:"


def redact_url(url: str) -> str:
    """`url` without its user and password: what refs, logs and errors may carry."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class RedisStore:
    """Embedding blobs and refs in one Redis. `location` (the URL without credentials) is what
    refs name; the password (AUTH) and TLS files stay in this object."""

    def __init__(self, url: str, ttl_s: float, chunk_bytes: int = 8 * 1024 * 1024, timeout_s: float = 2.0,
                 tls: TlsFiles | None = None, password: str = "", breaker_open_s: float = 5.0) -> None:
        self.location = redact_url(url)
        self.ttl_s = ttl_s
        self.chunk_bytes = chunk_bytes
        auth = {"password": password} if password else {}
        tls_kwargs = redis_tls_kwargs(tls) if url.startswith("rediss://") else {}
        self._client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                               **auth, **tls_kwargs)
        self.breaker = CircuitBreaker(f"redis {self.location}", self.ping, open_s=breaker_open_s)

    def _check_breaker(self) -> None:
        if not self.breaker.allow():
            raise StoreUnavailable(f"redis {self.location} is failing: skipped (circuit open)")

    def _failed(self, what: str, exc: Exception) -> StoreUnavailable:
        self.breaker.failed()
        return StoreUnavailable(f"redis {what} failed: {type(exc).__name__}")  # never the URL or its password

    async def put(self, ref: EmbeddingRef, blob: bytes) -> None:
        """Write the chunks and the ref in one transaction, so readers never see half an entry."""
        chunks = {str(i).encode(): blob[o : o + self.chunk_bytes]
                  for i, o in enumerate(range(0, max(len(blob), 1), self.chunk_bytes))}
        fields = {b"ref": convert.ref_to_pb(ref).SerializeToString(), b"n": str(len(chunks)).encode(), **chunks}
        self._check_breaker()
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(_PREFIX + ref.key, mapping=fields)
                pipe.expire(_PREFIX + ref.key, int(max(self.ttl_s, 1)))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._failed("put", exc) from exc
        self.breaker.succeeded()

    async def get_ref(self, key: str) -> EmbeddingRef | None:
        self._check_breaker()
        try:
            raw = await self._client.hget(_PREFIX + key, b"ref")
        except (RedisError, OSError) as exc:
            raise self._failed("get", exc) from exc
        self.breaker.succeeded()
        if raw is None:
            return None
        pb = common_pb2.EmbeddingRef()
        pb.ParseFromString(raw)
        return convert.ref_from_pb(pb)

    async def get_blob(self, key: str, token: str = "") -> bytes | None:
        """The blob stored under `key`, if the ref stored with it carries `token` (None otherwise:
        a content key alone never reads an embedding)."""
        self._check_breaker()
        try:
            fields = await self._client.hgetall(_PREFIX + key)
        except (RedisError, OSError) as exc:
            raise self._failed("get", exc) from exc
        self.breaker.succeeded()
        if not fields or not _token_matches(fields.get(b"ref"), token):
            return None
        count = int(fields[b"n"])
        return b"".join(fields[str(i).encode()] for i in range(count))

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.breaker.close()
        await self._client.aclose()


def _token_matches(raw_ref: bytes | None, token: str) -> bool:
    if raw_ref is None:
        return False
    pb = common_pb2.EmbeddingRef()
    pb.ParseFromString(raw_ref)
    return tokens_match(pb.access_token, token)
