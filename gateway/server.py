"""Runs the gateway: uvicorn (REST) and the gRPC server on one event loop; SIGTERM drains both."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from dvd.config import GatewayConfig
from dvd.grpc_server import GrpcService
from dvd.metrics import new_registry
from dvd.redis_store import RedisStore
from gateway.cache import RefCache
from gateway.grpc_pools import GrpcLanguagePool, GrpcVisionPool
from gateway.grpc_servicer import GatewayServicer
from gateway.images import ImageLoader
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.pools import LanguagePool, VisionPool
from gateway.routes import create_app
from protos.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


def build_pipeline(cfg: GatewayConfig, vision: VisionPool | None = None,
                   language: LanguagePool | None = None) -> Pipeline:
    """The gateway's pipeline; `vision`/`language` replace the gRPC pool clients of cfg's targets
    (the Ray Serve ingress passes pools over its deployment handles)."""
    redis = RedisStore(cfg.redis_url, cfg.ref_cache_ttl_s) if cfg.redis_url else None
    cache = RefCache(cfg.ref_cache_ttl_s, cfg.ref_cache_max_entries, redis)
    # An ejected vision replica's refs are dropped: it died, restarted empty, or is draining.
    vision = vision or GrpcVisionPool(cfg.vision_targets, cfg.replica_wait_s,
                                      on_eject=lambda target: cache.forget_location(f"grpc://{target}"))
    return Pipeline(cfg, vision, language or GrpcLanguagePool(cfg.language_targets, cfg.replica_wait_s),
                    ImageLoader(cfg.max_image_bytes, cfg.image_fetch_timeout_s, cfg.allow_http_images),
                    cache, GatewayMetrics(new_registry()))


async def serve(cfg: GatewayConfig) -> None:
    """Run REST and gRPC until SIGTERM/SIGINT, then drain and close the pools."""
    pipeline = build_pipeline(cfg)
    await pipeline.vision.start()
    await pipeline.language.start()
    grpc_service = GrpcService([SERVICE_NAME])
    grpc_port = grpc_service.bind(cfg.host, cfg.grpc_port)
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(pipeline), grpc_service.server)
    await grpc_service.start()
    await grpc_service.set_ready()
    rest = uvicorn.Server(uvicorn.Config(create_app(pipeline), host=cfg.host, port=cfg.port, log_level="warning",
                                         timeout_graceful_shutdown=int(cfg.drain_grace_s)))
    rest.install_signal_handlers = lambda: None  # GrpcService.serve_forever owns SIGTERM/SIGINT
    rest_task = asyncio.create_task(rest.serve(), name="rest")
    log.info("gateway: REST on %s:%d, gRPC on %s:%d", cfg.host, cfg.port, cfg.host, grpc_port)

    async def on_stop() -> None:
        rest.should_exit = True
        await rest_task

    try:
        await grpc_service.serve_forever(cfg.drain_grace_s, on_stop=on_stop)
    finally:
        await pipeline.close()
