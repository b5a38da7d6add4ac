"""The gateway's pool interface (`gateway.pools.VisionPool` / `LanguagePool`) over Ray Serve
deployment handles, so `gateway.pipeline.Pipeline` runs unchanged inside the Serve ingress.
Serve's router does what the gRPC pools do by hand: it balances on ongoing requests (power of
two choices), routes around dead replicas and follows autoscaling. Ray exceptions stay inside
this module: callers get the domain errors of `dvd.errors`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from dvd.deadline import Deadline
from dvd.errors import DvdError, Internal, ResourceExhausted, Unavailable
from dvd.types import (
    Codec,
    Delta,
    EmbeddingRef,
    EncodeResult,
    Message,
    RouteResult,
    SamplingParams,
    TilingOptions,
    VirMode,
    VirOptions,
)
from gateway.pools import PoolInfo

HEALTH_TIMEOUT_S = 5.0


def domain_error(err: Exception, pool: str) -> DvdError:
    """A failed Serve call as the domain error the gRPC pools would raise for it."""
    cause = err.cause if isinstance(err, RayTaskError) else None
    if isinstance(cause, DvdError):
        return cause  # raised by the core inside the replica: pass it through as it was
    if isinstance(err, BackPressureError):
        return ResourceExhausted(f"the {pool} pool is at its queue limit; retry later")
    if isinstance(err, (RayActorError, RayServeException)):
        return Unavailable(f"the {pool} pool could not serve the call: {type(err).__name__}")
    return Internal(f"{pool} replica failed: {type(cause or err).__name__}: {cause or err}")


@contextlib.contextmanager
def _domain_errors(pool: str) -> Iterator[None]:
    try:
        yield
    except (RayError, RayServeException) as err:
        raise domain_error(err, pool) from err


class _HandlePool:
    pool = ""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def start(self) -> None:
        """Nothing to discover: Serve tracks the replicas."""

    async def healthy(self) -> bool:
        """Some replica answers `info` in time (Serve routes it to a live one)."""
        try:
            await asyncio.wait_for(self._info(), HEALTH_TIMEOUT_S)
        except (DvdError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        """The handle belongs to Serve; nothing to release."""

    async def _info(self) -> dict:
        with _domain_errors(self.pool):
            return await self.handle.info.remote()


class RayVisionPool(_HandlePool):
    """`affinity` is not used: Serve's router has no key affinity. So without Redis an image that
    another vision replica saw is encoded again (the gateway's ref cache still hits), and the Encode
    after a multi-image Route may run the ViT again on another replica. Both stay correct."""

    pool = "vision"

    def __init__(self, handle: DeploymentHandle) -> None:
        super().__init__(handle)
        self._pool_info: PoolInfo | None = None

    async def info(self) -> PoolInfo:
        """The pool's model facts (the replicas' `info()`), asked once."""
        if self._pool_info is None:
            info = await self._info()
            self._pool_info = PoolInfo(info["cache_namespace"], info["has_router"], info["default_vir"] or VirMode.OFF,
                                       info["codec"])
        return self._pool_info

    async def encode(self, image: bytes, tiling: TilingOptions, vir: VirOptions, codec: Codec | None,
                     request_id: str, affinity: str = "", scope: str = "",
                     deadline: Deadline | None = None) -> EncodeResult:
        with _domain_errors(self.pool):
            result = await self.handle.encode.remote(image, tiling, vir, codec, scope)
        return result

    async def route(self, image: bytes, tiling: TilingOptions, request_id: str, affinity: str = "",
                    scope: str = "", deadline: Deadline | None = None) -> RouteResult:
        """Router scores of one image's tiles (phase one of a multi-image auto request)."""
        with _domain_errors(self.pool):
            result = await self.handle.route.remote(image, tiling, scope)
        return result


class RayLanguagePool(_HandlePool):
    pool = "language"

    async def generate(self, request_id: str, messages: list[Message], refs: list[EmbeddingRef],
                       sampling: SamplingParams, deadline: Deadline | None = None,
                       scope: str = "") -> AsyncIterator[Delta]:
        """Stream deltas from one language replica; the refs travel, the embeddings do not
        (the replica pulls them from the vision replica that holds them)."""
        stream = self.handle.options(stream=True).generate.remote(request_id, messages, refs, sampling, scope)
        finished = False
        try:
            with _domain_errors(self.pool):
                async for delta in stream:
                    finished = delta.finish_reason is not None
                    yield delta
        finally:
            if not finished:  # the client went away (or the call failed): free the decode slot
                stream.cancel()
