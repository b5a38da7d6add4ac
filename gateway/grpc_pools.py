"""The gRPC implementations of the pool interface (`gateway.pools`). Protobuf stays inside this
module: callers get `dvd.types` objects. Each pool follows its discovery specs (static list, DNS, or Kubernetes
EndpointSlices), checks replica health every few seconds, and retries a failed call on
another replica where that is safe: Encode always (it is idempotent: content-keyed), Generate
only before its first token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from dvd import convert
from dvd.errors import from_grpc_error
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
RETRY_ELSEWHERE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.UNKNOWN}
# Of those, the ones that say the replica itself is unwell: eject it for a while.
EJECT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN}
MAX_ATTEMPTS = 3
HEALTH_PERIOD_S = 5.0  # every replica
EJECTED_PROBE_PERIOD_S = 0.5  # ejected replicas whose backoff has passed


def _spec(text: str) -> str:
    """A bare HOST:PORT is a static target; anything else is a discovery spec."""
    return text if text.split(":", 1)[0] in ("static", "dns", "k8s") else f"static:{text}"


class _GrpcPool:
    """Discovery, health checks and replica bookkeeping shared by both gRPC pools."""

    stub_class: type
    service_name: str

    def __init__(self, specs: tuple[str, ...], call_timeout_s: float = 600.0, tls: TlsFiles | None = None) -> None:
        self.specs = tuple(_spec(s) for s in specs)
        self.call_timeout_s = call_timeout_s
        self.replicas = ReplicaSet(self.service_name, self.stub_class, tls=tls)
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


class GrpcVisionPool(_GrpcPool):
    """The vision pool over gRPC: `VisionEncoder` replicas, content-key affinity, retries elsewhere."""

    stub_class = vision_pb2_grpc.VisionEncoderStub
    service_name = vision_pb2.DESCRIPTOR.services_by_name["VisionEncoder"].full_name

    def __init__(self, specs: tuple[str, ...], call_timeout_s: float = 600.0, tls: TlsFiles | None = None) -> None:
        super().__init__(specs, call_timeout_s, tls)
        self._info: PoolInfo | None = None

    async def info(self) -> PoolInfo:
        """The pool's model facts (VisionInfo), asked once."""
        if self._info is None:
            info = await self._call(lambda stub: stub.Info(vision_pb2.VisionInfoRequest(), timeout=10))
            default_vir = convert.vir_from_pb(info.default_vir) or VirMode.OFF
            self._info = PoolInfo(info.cache_namespace, info.has_router, default_vir, convert.codec_from_pb(info.codec))
        return self._info

    async def encode(self, image: bytes, tiling: TilingOptions, vir: VirOptions,
                     codec: Codec | None, request_id: str, affinity: str = "", scope: str = "") -> EncodeResult:
        """Encode one image on the replica that owns `affinity` (else the least loaded)."""
        request = vision_pb2.EncodeRequest(
            cache_scope=scope,
            request_id=request_id, image=image, tiling=convert.tiling_to_pb(tiling),
            vir=convert.VIR_TO_PB[vir.mode] if vir.mode else 0, codec=convert.CODEC_TO_PB[codec] if codec else 0,
            vir_thresholds=convert.vir_thresholds_to_pb(vir), vir_group_scores=list(vir.group_scores),
        )
        reply = await self._call(lambda stub: stub.Encode(request, timeout=self.call_timeout_s), affinity)
        return EncodeResult(convert.ref_from_pb(reply.ref), convert.timings_from_pb(reply.timings), reply.cache_hit,
                            reply.num_tiles)

    async def route(self, image: bytes, tiling: TilingOptions, request_id: str, affinity: str = "",
                    scope: str = "") -> RouteResult:
        """Router scores of one image's tiles (phase one of a multi-image auto request)."""
        request = vision_pb2.RouteRequest(request_id=request_id, image=image, tiling=convert.tiling_to_pb(tiling),
                                          cache_scope=scope)
        reply = await self._call(lambda stub: stub.Route(request, timeout=self.call_timeout_s), affinity)
        return RouteResult(tuple(reply.compress_scores), convert.timings_from_pb(reply.timings), reply.cache_hit)

    async def _call(self, send, affinity: str = ""):
        """A unary call with retries on other replicas (Encode and Info are idempotent)."""
        tried: set[str] = set()
        while True:
            replica = await self.replicas.acquire(affinity, exclude=frozenset(tried))
            tried.add(replica.target)
            replica.outstanding += 1
            replica.calls += 1
            try:
                reply = await send(replica.stub)
            except grpc.aio.AioRpcError as err:
                self._failed(replica, err)
                if err.code() not in RETRY_ELSEWHERE or len(tried) >= min(MAX_ATTEMPTS, len(self.replicas.replicas)):
                    raise from_grpc_error(err) from err
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

    async def generate(self, request_id: str, messages: list[Message], refs: list[EmbeddingRef],
                       sampling: SamplingParams) -> AsyncIterator[Delta]:
        """Stream one reply; a failure before the first token is retried on another replica."""
        request = language_pb2.GenerateRequest(
            request_id=request_id, messages=convert.messages_to_pb(messages),
            images=[convert.ref_to_pb(r) for r in refs], sampling=convert.sampling_to_pb(sampling),
        )
        tried: set[str] = set()
        while True:
            replica = await self.replicas.acquire(exclude=frozenset(tried))
            tried.add(replica.target)
            started = False
            try:
                async with contextlib.aclosing(self._stream(replica, request)) as stream:
                    async for delta in stream:
                        started = True
                        yield delta
                return
            except _StreamFailed as failure:
                err = failure.err
                self._failed(replica, err)
                retry = not started and err.code() in RETRY_ELSEWHERE
                if not retry or len(tried) >= min(MAX_ATTEMPTS, len(self.replicas.replicas)):
                    raise from_grpc_error(err) from err
                log.warning("generate on %s failed before its first token (%s); retrying elsewhere",
                            replica.target, err.code().name)

    async def _stream(self, replica: Replica, request) -> AsyncIterator[Delta]:
        replica.outstanding += 1
        replica.calls += 1
        call = replica.stub.Generate(request, timeout=self.call_timeout_s)
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

