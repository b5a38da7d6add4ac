"""Clients for the vision and language pools. Each call goes to the replica with the fewest
outstanding calls (round-robin among ties), one HTTP/2 channel per replica. Protobuf stays
inside this module: callers get `dvd.types` objects."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dvd import convert
from dvd.errors import Unavailable, from_grpc_error
from dvd.grpc_server import channel_options
from dvd.types import Codec, Delta, EmbeddingRef, Message, SamplingParams, StageTimings, TilingOverrides, VirMode
from protos.v1 import language_pb2, language_pb2_grpc, vision_pb2, vision_pb2_grpc


@dataclass
class Replica:
    target: str
    channel: grpc.aio.Channel
    stub: object
    outstanding: int = 0


@dataclass(frozen=True)
class Encoded:
    ref: EmbeddingRef
    timings: StageTimings
    cache_hit: bool


class _Pool:
    stub_class: type
    service_name: str

    def __init__(self, targets: tuple[str, ...]) -> None:
        self.replicas = []
        for target in targets:
            channel = grpc.aio.insecure_channel(target, options=channel_options())
            self.replicas.append(Replica(target, channel, self.stub_class(channel)))
        self._tiebreak = itertools.count()

    def pick(self, affinity: str = "") -> Replica:
        """Least outstanding calls; with an affinity key, the key's rendezvous-hash owner
        (identical images land on the replica whose memory already holds them)."""
        if not self.replicas:
            raise Unavailable(f"no {self.service_name} replica is configured")
        if affinity:
            return max(self.replicas, key=lambda r: hashlib.blake2b(f"{affinity}|{r.target}".encode(),
                                                                   digest_size=8).digest())
        low = min(r.outstanding for r in self.replicas)
        candidates = [r for r in self.replicas if r.outstanding == low]
        return candidates[next(self._tiebreak) % len(candidates)]

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when at least one replica reports its service SERVING."""
        for replica in self.replicas:
            try:
                reply = await health_pb2_grpc.HealthStub(replica.channel).Check(
                    health_pb2.HealthCheckRequest(service=self.service_name), timeout=timeout_s)
            except grpc.aio.AioRpcError:
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return True
        return False

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.channel.close()


class VisionPool(_Pool):
    stub_class = vision_pb2_grpc.VisionEncoderStub
    service_name = vision_pb2.DESCRIPTOR.services_by_name["VisionEncoder"].full_name

    def __init__(self, targets: tuple[str, ...]) -> None:
        super().__init__(targets)
        self._namespace = ""

    async def namespace(self) -> str:
        """The pool's cache namespace (VisionInfo.cache_namespace), asked once."""
        if not self._namespace:
            try:
                info = await self.pick().stub.Info(vision_pb2.VisionInfoRequest(), timeout=10)
            except grpc.aio.AioRpcError as err:
                raise from_grpc_error(err) from err
            self._namespace = info.cache_namespace
        return self._namespace

    async def encode(self, image: bytes, tiling: TilingOverrides, vir: VirMode | None,
                     codec: Codec | None, request_id: str, affinity: str = "") -> Encoded:
        request = vision_pb2.EncodeRequest(
            request_id=request_id, image=image, tiling=convert.tiling_to_pb(tiling),
            vir=convert.VIR_TO_PB[vir] if vir else 0, codec=convert.CODEC_TO_PB[codec] if codec else 0,
        )
        replica = self.pick(affinity)
        replica.outstanding += 1
        try:
            reply = await replica.stub.Encode(request)
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from err
        finally:
            replica.outstanding -= 1
        return Encoded(convert.ref_from_pb(reply.ref), convert.timings_from_pb(reply.timings), reply.cache_hit)


class LanguagePool(_Pool):
    stub_class = language_pb2_grpc.LanguageDecoderStub
    service_name = language_pb2.DESCRIPTOR.services_by_name["LanguageDecoder"].full_name

    async def generate(self, request_id: str, messages: list[Message], refs: list[EmbeddingRef],
                       sampling: SamplingParams) -> AsyncIterator[Delta]:
        request = language_pb2.GenerateRequest(
            request_id=request_id, messages=convert.messages_to_pb(messages),
            images=[convert.ref_to_pb(r) for r in refs], sampling=convert.sampling_to_pb(sampling),
        )
        replica = self.pick()
        replica.outstanding += 1
        call = replica.stub.Generate(request)
        try:
            async for reply in call:
                yield convert.delta_from_pb(reply)
        except grpc.aio.AioRpcError as err:
            raise from_grpc_error(err) from err
        finally:
            replica.outstanding -= 1
            call.cancel()  # no-op when finished; aborts the generation when our caller went away
