"""The gRPC implementations of the pool interface (`gateway.pools`). Protobuf stays inside this
module: callers get `dvd.types` objects. Each pool follows its discovery specs (static list, DNS, or Kubernetes
EndpointSlices), checks replica health every few seconds, and retries a failed call on
another replica where that is safe: Encode always (it is idempotent: content-keyed), Generate
only before its first token. Retries back off with jitter and share the request's deadline;
every call's timeout is what is left of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable

import grpc

from dvd import convert
from dvd.deadline import Deadline
from dvd.errors import DvdError, Unavailable, from_grpc_error
from dvd.tls import TlsFiles
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
from gateway.discovery import from_spec
from gateway.pools import PoolInfo
from gateway.replicas import Replica, ReplicaSet
from protos.v1 import language_pb2, language_pb2_grpc, vision_pb2, vision_pb2_grpc

log = logging.getLogger(__name__)

# Failures that say "this replica, now" rather than "this request": try another replica.
# DEADLINE_EXCEEDED is not one: every call's timeout is what is left of the request's deadline,
# so it says the request ran out of time (a hung replica is found by keepalive: UNAVAILABLE).
# CANCELLED is one: this process cancels its own calls only when its caller went away (then
# asyncio cancels it too and nothing is retried), so a CANCELLED status says a replica that
# was shutting down cut the call.
RETRY_ELSEWHERE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN,
                   grpc.StatusCode.CANCELLED}
# Of those, the ones that say the replica itself is unwell: eject it for a while.
EJECT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN}
MAX_ATTEMPTS = 3
HEALTH_PERIOD_S = 5.0  # every replica
EJECTED_PROBE_PERIOD_S = 0.5  # ejected replicas whose backoff has passed
# Before retry n (n >= 1): a uniform pause in [0, min(CAP, BASE * 2**(n-1))] ("full jitter"), so a
# burst that found every replica full does not come back in lockstep.
RETRY_BASE_S = 0.05
RETRY_CAP_S = 0.5
DEFAULT_TIMEOUT_S = 600.0  # a call made without a request deadline (Info, direct callers)


_rng = random.Random()


async def backoff(attempt: int, deadline: Deadline | None, rng: random.Random = _rng) -> None:
    """Sleep before retry `attempt` (1 = the first retry), never past the deadline."""
    pause = rng.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1)))
    if deadline is not None:
        pause = min(pause, max(deadline.remaining_s(), 0))
    await asyncio.sleep(pause)


def _timeout(deadline: Deadline | None, what: str) -> float:
    return deadline.timeout_s(what=what) if deadline is not None else DEFAULT_TIMEOUT_S


def _final_error(err: grpc.aio.AioRpcError, pool: str, num_replicas: int) -> DvdError:
    """The domain error of a call that will not be retried; a pool with nothing left says so."""
    if err.code() != grpc.StatusCode.FAILED_PRECONDITION:  # a lost embedding is the pipeline's to handle
        log.warning("%s call failed for good: %s %s", pool, err.code().name, err.details())
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"the {pool} pool has no live replica ({num_replicas} known, none answering): "
                           f"{err.details() or 'unavailable'}")
    return from_grpc_error(err)


def _spec(text: str) -> str:
    """A bare HOST:PORT is a static target; anything else is a discovery spec."""
    return text if text.split(":", 1)[0] in ("static", "dns", "k8s") else f"static:{text}"


class _GrpcPool:
    """Discovery, health checks and replica bookkeeping shared by both gRPC pools."""

    stub_class: type
    service_name: str

    pool_name: str

    def __init__(self, specs: tuple[str, ...], replica_wait_s: float = 15.0,
                 on_eject: Callable[[str], None] | None = None, tls: TlsFiles | None = None) -> None:
        self.specs = tuple(_spec(s) for s in specs)
        self.replica_wait_s = replica_wait_s
        self.replicas = ReplicaSet(self.service_name, self.stub_class, on_eject=on_eject, tls=tls)
        self._found: dict[str, frozenset[str]] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start discovery and health checks; returns once every spec has produced a first set."""
        for spec in self.specs:
            self._tasks.append(asyncio.create_task(from_spec(spec).run(lambda t, s=spec: self._on_change(s, t))))
        self._tasks.append(asyncio.create_task(self._health_loop()))
        for _ in range(100):
            if len(self._found) == len(self.specs):
                return
            await asyncio.sleep(0.05)
        log.warning("%s: discovery has not answered yet for %s", self.service_name, self.specs)

    def _on_change(self, spec: str, targets: frozenset[str]) -> None:
        self._found[spec] = targets
        self.replicas.set_targets(frozenset().union(*self._found.values()))

    async def _health_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.replicas.check_health()
            next_sweep = loop.time() + HEALTH_PERIOD_S
            while loop.time() < next_sweep:
                await asyncio.sleep(EJECTED_PROBE_PERIOD_S)
                await self.replicas.check_health(which="due")

    async def healthy(self) -> bool:
        """Whether at least one replica answers its health check as SERVING."""
        await self.replicas.check_health()
        return self.replicas.healthy_count() > 0

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.replicas.close()

    def _failed(self, replica: Replica, err: grpc.aio.AioRpcError) -> None:
        if err.code() in EJECT:
            self.replicas.failed(replica, err.code().name)

    async def _acquire(self, affinity: str, tried: set[str], deadline: Deadline | None) -> Replica:
        wait_s = self.replica_wait_s if deadline is None else min(self.replica_wait_s, max(deadline.remaining_s(), 0))
        return await self.replicas.acquire(affinity, exclude=frozenset(tried), wait_s=wait_s)

    def _gives_up(self, err: grpc.aio.AioRpcError, tried: set[str], retryable: bool = True) -> bool:
        return (not retryable or err.code() not in RETRY_ELSEWHERE
                or len(tried) >= min(MAX_ATTEMPTS, len(self.replicas.replicas)))


class GrpcVisionPool(_GrpcPool):
    """The vision pool over gRPC: `VisionEncoder` replicas, content-key affinity, retries elsewhere."""

    stub_class = vision_pb2_grpc.VisionEncoderStub
    service_name = vision_pb2.DESCRIPTOR.services_by_name["VisionEncoder"].full_name
    pool_name = "vision"

    def __init__(self, specs: tuple[str, ...], replica_wait_s: float = 15.0,
                 on_eject: Callable[[str], None] | None = None, tls: TlsFiles | None = None) -> None:
        super().__init__(specs, replica_wait_s, on_eject, tls)
        self._info: PoolInfo | None = None

    async def info(self) -> PoolInfo:
        """The pool's model facts (VisionInfo), asked once."""
        if self._info is None:
            info = await self._call(lambda stub: stub.Info(vision_pb2.VisionInfoRequest(), timeout=10))
            default_vir = convert.vir_from_pb(info.default_vir) or VirMode.OFF
            self._info = PoolInfo(info.cache_namespace, info.has_router, default_vir, convert.codec_from_pb(info.codec))
        return self._info

    async def encode(self, image: bytes, tiling: TilingOptions, vir: VirOptions, codec: Codec | None,
                     request_id: str, affinity: str = "", scope: str = "",
                     deadline: Deadline | None = None) -> EncodeResult:
        """Encode one image on the replica that owns `affinity` (else the least loaded)."""
        request = vision_pb2.EncodeRequest(
            cache_scope=scope,
            request_id=request_id, image=image, tiling=convert.tiling_to_pb(tiling),
            vir=convert.VIR_TO_PB[vir.mode] if vir.mode else 0, codec=convert.CODEC_TO_PB[codec] if codec else 0,
            vir_thresholds=convert.vir_thresholds_to_pb(vir), vir_group_scores=list(vir.group_scores),
        )
        reply = await self._call(lambda stub: stub.Encode(request, timeout=_timeout(deadline, "encode")), affinity,
                                 deadline)
        return EncodeResult(convert.ref_from_pb(reply.ref), convert.timings_from_pb(reply.timings), reply.cache_hit,
                            reply.num_tiles)

    async def route(self, image: bytes, tiling: TilingOptions, request_id: str, affinity: str = "",
                    scope: str = "", deadline: Deadline | None = None) -> RouteResult:
        """Router scores of one image's tiles (phase one of a multi-image auto request)."""
        request = vision_pb2.RouteRequest(request_id=request_id, image=image, tiling=convert.tiling_to_pb(tiling),
                                          cache_scope=scope)
        reply = await self._call(lambda stub: stub.Route(request, timeout=_timeout(deadline, "route")), affinity,
                                 deadline)
        return RouteResult(tuple(reply.compress_scores), convert.timings_from_pb(reply.timings), reply.cache_hit)

    async def _call(self, send, affinity: str = "", deadline: Deadline | None = None):
        """A unary call with retries on other replicas (Encode and Info are idempotent)."""
        tried: set[str] = set()
        while True:
            if tried:
                await backoff(len(tried), deadline)
            replica = await self._acquire(affinity, tried, deadline)
            tried.add(replica.target)
            replica.outstanding += 1
            try:
                reply = await send(replica.stub)
            except grpc.aio.AioRpcError as err:
                self._failed(replica, err)
                if self._gives_up(err, tried):
                    raise _final_error(err, self.pool_name, len(self.replicas.replicas)) from err
                log.warning("vision call to %s failed (%s); retrying elsewhere", replica.target, err.code().name)
                continue
            finally:
                replica.outstanding -= 1
            self.replicas.succeeded(replica)
            return reply


class GrpcLanguagePool(_GrpcPool):
    """The language pool over gRPC: `LanguageDecoder` replicas, least-loaded, retried before the first token."""

    stub_class = language_pb2_grpc.LanguageDecoderStub
    service_name = language_pb2.DESCRIPTOR.services_by_name["LanguageDecoder"].full_name
    pool_name = "language"

    async def generate(self, request_id: str, messages: list[Message], refs: list[EmbeddingRef],
                       sampling: SamplingParams, deadline: Deadline | None = None,
                       scope: str = "") -> AsyncIterator[Delta]:
        """Stream one reply; a failure before the first token is retried on another replica."""
        request = language_pb2.GenerateRequest(
            request_id=request_id, messages=convert.messages_to_pb(messages),
            images=[convert.ref_to_pb(r) for r in refs], sampling=convert.sampling_to_pb(sampling),
            cache_scope=scope,
        )
        tried: set[str] = set()
        while True:
            if tried:
                await backoff(len(tried), deadline)
            replica = await self._acquire("", tried, deadline)
            tried.add(replica.target)
            started = False
            try:
                async with contextlib.aclosing(self._stream(replica, request, deadline)) as stream:
                    async for delta in stream:
                        started = True
                        yield delta
                return
            except _StreamFailed as failure:
                err = failure.err
                self._failed(replica, err)
                if self._gives_up(err, tried, retryable=not started):
                    raise _final_error(err, self.pool_name, len(self.replicas.replicas)) from err
                log.warning("generate on %s failed before its first token (%s); retrying elsewhere",
                            replica.target, err.code().name)

    async def _stream(self, replica: Replica, request, deadline: Deadline | None) -> AsyncIterator[Delta]:
        call = replica.stub.Generate(request, timeout=_timeout(deadline, "generation"))
        replica.outstanding += 1
        try:
            async for reply in call:
                yield convert.delta_from_pb(reply)
            self.replicas.succeeded(replica)
        except grpc.aio.AioRpcError as err:
            raise _StreamFailed(err) from err
        finally:
            replica.outstanding -= 1
            call.cancel()  # no-op when finished; aborts the generation when our caller went away


class _StreamFailed(Exception):
    def __init__(self, err: grpc.aio.AioRpcError) -> None:
        super().__init__(err.details())
        self.err = err

