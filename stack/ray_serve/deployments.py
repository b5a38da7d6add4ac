"""The three Ray Serve deployments. Each wraps the core its plain process runs (`VisionCore`,
`LanguageCore`, the gateway's `Pipeline` + FastAPI app), so the logic is the same code in both
worlds; only the transport between the gateway and the pools changes (Serve handles instead of
gRPC clients), which is what lets Serve's autoscaler see each pool's ongoing requests.

Embeddings travel by reference as everywhere else: a vision replica keeps the blobs it encodes
in its `MemoryStore` and serves them with the same `VisionServicer` (FetchEmbedding) on a gRPC
port of its own; a language replica pulls them from there with its `EmbeddingFetcher`. Neither
the gateway nor Serve's handles carry the bytes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import ray
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from dvd.checkpoint import resolve_checkpoint
from dvd.config import GatewayConfig, LanguageConfig, VisionConfig
from dvd.errors import DvdError, kind_of
from dvd.grpc_server import GrpcService
from dvd.metrics import new_registry
from dvd.types import (
    Codec,
    Delta,
    EmbeddingRef,
    EncodeResult,
    Message,
    RouteResult,
    SamplingParams,
    TilingOptions,
    VirOptions,
)
from gateway.grpc_servicer import GatewayServicer
from gateway.routes import create_app
from gateway.server import build_pipeline
from language_service.core import LanguageCore
from protos.v1 import vision_pb2_grpc
from stack.ray_serve.pools import RayLanguagePool, RayVisionPool
from vision_service.core import VisionCore
from vision_service.metrics import VisionMetrics
from vision_service.server import SERVICE_NAME as VISION_SERVICE
from vision_service.servicer import VisionServicer

log = logging.getLogger(__name__)

ANY_ADDRESS = ("0.0.0.0", "::", "")
FETCH_GRACE_S = 5.0


@serve.deployment(name="vision")
class VisionDeployment:
    """One vision replica: `encode` through Serve (load-balanced, autoscaled), FetchEmbedding
    through its own gRPC server at the location its refs name."""

    async def __init__(self, cfg: VisionConfig) -> None:
        self.linger_s = cfg.linger_s
        self.service = GrpcService([VISION_SERVICE])
        port = self.service.bind(cfg.host, cfg.port)
        host = ray.util.get_node_ip_address() if cfg.host in ANY_ADDRESS else cfg.host
        advertise = cfg.advertise or f"{host}:{port}"
        self.core = VisionCore(cfg, resolve_checkpoint(cfg.model), location=f"grpc://{advertise}",
                               metrics=VisionMetrics(new_registry()))
        vision_pb2_grpc.add_VisionEncoderServicer_to_server(VisionServicer(self.core), self.service.server)
        await self.service.start()
        await asyncio.to_thread(self.core.load)
        self.core.start()
        await self.service.set_ready()
        log.info("vision replica ready; embeddings served from %s", self.core.location)

    async def encode(self, image: bytes, tiling: TilingOptions, vir: VirOptions, codec: Codec | None,
                     scope: str = "") -> EncodeResult:
        return await self.core.encode(image, tiling, vir, codec, model_id="", scope=scope)

    async def route(self, image: bytes, tiling: TilingOptions, scope: str = "") -> RouteResult:
        return await self.core.route(image, tiling, model_id="", scope=scope)

    def info(self) -> dict:
        return self.core.info()

    async def __del__(self) -> None:
        # Serve calls this once the replica's in-flight encodes are done. As the process service
        # does on SIGTERM: linger (refs handed out just now stay fetchable), then let fetches under
        # way finish, all within Serve's graceful_shutdown_timeout_s (20 s by default).
        await self.service.health.enter_graceful_shutdown()
        await asyncio.sleep(self.linger_s)
        await self.core.stop()
        await self.service.server.stop(FETCH_GRACE_S)


@serve.deployment(name="language")
class LanguageDeployment:
    """One language replica: `generate` streams `dvd.types.Delta`s through Serve."""

    async def __init__(self, cfg: LanguageConfig) -> None:
        self.core = LanguageCore(cfg, resolve_checkpoint(cfg.model))
        await asyncio.to_thread(self.core.load)

    async def generate(self, request_id: str, messages: list[Message], refs: list[EmbeddingRef],
                       sampling: SamplingParams, scope: str = "") -> AsyncIterator[Delta]:
        async for delta in self.core.generate(request_id, messages, refs, sampling, cache_scope=scope):
            yield delta

    def info(self) -> dict:
        return self.core.info()

    async def __del__(self) -> None:
        await self.core.fetcher.close()
        await asyncio.to_thread(self.core.stop)


@serve.deployment(name="gateway")
@serve.ingress()
class GatewayIngress:
    """The gateway as Serve's ingress: its FastAPI app (OpenAI REST) on Serve's HTTP proxy and its
    gRPC servicer (`dvd.v1.Gateway`) on Serve's gRPC proxy, over a `Pipeline` whose pools are the
    two deployments' handles."""

    def __init__(self, cfg: GatewayConfig, vision: DeploymentHandle, language: DeploymentHandle) -> None:
        self.pipeline = build_pipeline(cfg, RayVisionPool(vision), RayLanguagePool(language))
        self.grpc = GatewayServicer(self.pipeline)

    def __serve_build_asgi_app__(self):
        return create_app(self.pipeline)

    async def Chat(self, request, grpc_context: RayServegRPCContext):
        with _grpc_status(grpc_context):
            async for reply in self.grpc.Chat(request, _ServeContext(grpc_context)):
                yield reply

    async def ListModels(self, request, grpc_context: RayServegRPCContext):
        return await self.grpc.ListModels(request, _ServeContext(grpc_context))

    async def __del__(self) -> None:
        await self.pipeline.close()


class _ServeContext:
    """Ray Serve's gRPC context as `GatewayServicer` reads a grpc.aio one. Serve's has no deadline
    API, so `time_remaining` is None there and the gateway's own --request-timeout-s applies."""

    def __init__(self, context: RayServegRPCContext) -> None:
        self._context = context

    def time_remaining(self) -> float | None:
        return None

    def __getattr__(self, name: str):
        return getattr(self._context, name)


@contextlib.contextmanager
def _grpc_status(grpc_context: RayServegRPCContext) -> Iterator[None]:
    """Domain errors to their gRPC status (the `dvd.errors` table), as the process gateway's
    interceptor does; Serve's proxy sends the status set on the context."""
    try:
        yield
    except DvdError as exc:
        grpc_context.set_code(kind_of(exc).grpc_code)
        grpc_context.set_details(exc.message)
        raise
