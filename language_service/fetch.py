"""Pulls image embeddings by reference: from Redis, over gRPC from the vision replica that
holds them, or straight from an in-process store (monolithic mode). A ref in Redis names its
vision replica as the fallback, so a Redis outage costs a hop, not a request. Verifies size
and checksum.

A ref whose embeddings cannot be had (its vision replica is gone, restarted empty, or says the
bytes are lost; the store evicted them) raises `EmbeddingLost`, which the gateway answers by
encoding the image again. Every fetch ends by the request's deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc
import torch

from dvd import codec as codecs
from dvd.deadline import Deadline
from dvd.errors import DataCorrupted, DeadlineExceeded, EmbeddingLost, InvalidRequest, from_grpc_error
from dvd.grpc_options import channel_options
from dvd.store import MemoryStore, StoreUnavailable
from dvd.tls import TlsFiles, aio_channel
from dvd.types import EmbeddingRef

if TYPE_CHECKING:
    from dvd.redis_store import RedisStore

# The Redis client and the generated protobuf code are imported by the paths that use them: an
# engine fed from an in-process store (monolithic mode, `scripts/gpu_check.sh` on a bare GPU box
# without redis or this protobuf runtime) loads without either.


def _redis_store(url: str, tls: TlsFiles | None = None, password: str = "") -> RedisStore:
    from dvd.redis_store import RedisStore

    return RedisStore(url, ttl_s=1.0, tls=tls, password=password)

log = logging.getLogger(__name__)

# A vision replica answering these for a ref has not got its embeddings (any more): gone, restarted
# empty, or the bytes broke on the way. The ref is dead, not the request.
# CANCELLED: the replica was shutting down and cut the fetch.
LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.CANCELLED}


class EmbeddingFetcher:
    """`tls`: client TLS (mTLS with a certificate) to vision replicas; `redis_url` (with
    `redis_tls`, `redis_password`): the configured Redis (refs name it by its credential-free
    location)."""

    def __init__(self, timeout_s: float, local_stores: dict[str, MemoryStore] | None = None,
                 tls: TlsFiles | None = None, redis_url: str = "", redis_tls: TlsFiles | None = None,
                 redis_password: str = "") -> None:
        self.timeout_s = timeout_s
        self.local_stores = local_stores or {}
        self.tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._redis: dict[str, RedisStore] = {}
        if redis_url:
            redis = _redis_store(redis_url, redis_tls, redis_password)
            self._redis[redis.location] = redis

    async def fetch_all(self, refs: list[EmbeddingRef], request_id: str,
                        deadline: Deadline | None = None) -> tuple[list[torch.Tensor], int]:
        """Fetch every ref concurrently; returns ([num_tokens_i, hidden] tensors, elapsed ns)."""
        started = time.perf_counter_ns()
        deadline = deadline or Deadline.after(self.timeout_s)
        tensors = await asyncio.gather(*(self.fetch(ref, request_id, deadline) for ref in refs))
        return list(tensors), time.perf_counter_ns() - started

    async def fetch(self, ref: EmbeddingRef, request_id: str = "", deadline: Deadline | None = None) -> torch.Tensor:
        blob = await self._blob(ref, request_id, deadline or Deadline.after(self.timeout_s))
        if len(blob) != ref.num_bytes or codecs.checksum(blob) != ref.checksum:
            raise DataCorrupted(f"embedding {ref.key!r} failed its size/checksum check")
        return await asyncio.to_thread(codecs.decode, blob, ref.codec, ref.shape, ref.compression)

    async def _blob(self, ref: EmbeddingRef, request_id: str, deadline: Deadline) -> bytes:
        if ref.location.startswith(("redis://", "rediss://", "unix://")):
            blob = await self._from_redis(ref)
            if blob is not None:
                return blob
            if not ref.fallback_location:
                raise EmbeddingLost(f"embedding {ref.key!r} is not in the shared store and has no fallback")
            return await self._from_location(ref.fallback_location, ref, request_id, deadline)
        return await self._from_location(ref.location, ref, request_id, deadline)

    async def _from_redis(self, ref: EmbeddingRef) -> bytes | None:
        store = self._redis.get(ref.location)
        if store is None:
            store = self._redis[ref.location] = _redis_store(ref.location)
        try:
            return await store.get_blob(ref.key, ref.access_token)
        except StoreUnavailable as exc:
            log.warning("redis unreadable, fetching an embedding from its vision replica: %s", exc)
            return None

    async def _from_location(self, location: str, ref: EmbeddingRef, request_id: str, deadline: Deadline) -> bytes:
        if location in self.local_stores:
            entry = self.local_stores[location].get_with_token(ref.key, ref.access_token)
            if entry is None:
                raise EmbeddingLost(f"embedding {ref.key!r} is not in the local store (expired or evicted)")
            return entry[1]
        if not location.startswith("grpc://"):
            raise InvalidRequest("unsupported embedding location (not grpc://)")
        from protos.v1 import vision_pb2, vision_pb2_grpc

        stub = vision_pb2_grpc.VisionEncoderStub(self._channel(location.removeprefix("grpc://")))
        request = vision_pb2.FetchEmbeddingRequest(key=ref.key, request_id=request_id,
                                                   access_token=ref.access_token)
        parts: list[bytes] = []
        try:
            async for chunk in stub.FetchEmbedding(request, timeout=deadline.timeout_s(self.timeout_s, "fetch")):
                parts.append(chunk.data)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"fetching embedding {ref.key!r} from its vision replica timed out") from err
            if err.code() in LOST:
                raise EmbeddingLost(
                    f"embedding lost: its vision replica answered {err.code().name} for {ref.key!r}") from err
            upstream = from_grpc_error(err)
            raise type(upstream)(f"fetching an embedding from its vision replica: {upstream.message}") from err
        return b"".join(parts)

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            self._channels[target] = aio_channel(target, self.tls, channel_options(client=True))
        return self._channels[target]

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))
        await asyncio.gather(*(r.close() for r in self._redis.values()))
        self._channels.clear()
        self._redis.clear()
