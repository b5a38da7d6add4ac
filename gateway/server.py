"""Runs the gateway: uvicorn (REST) and the gRPC server on one event loop; SIGTERM drains both."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

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
from gateway.url_guard import UrlGuard, UrlPolicy
from gateway.video import VideoLoader
from protos.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
VIDEO_TYPES = ("video/", "application/octet-stream")


def build_pipeline(cfg: GatewayConfig, vision: VisionPool | None = None,
                   language: LanguagePool | None = None) -> Pipeline:
    """The gateway's pipeline; `vision`/`language` replace the gRPC pool clients of cfg's targets
    (the Ray Serve ingress passes pools over its deployment handles)."""
    redis = RedisStore(cfg.redis_url, cfg.ref_cache_ttl_s, tls=cfg.redis_tls,
                       password=cfg.redis_password) if cfg.redis_url else None
    images = url_policy(cfg)
    videos = replace(images, max_bytes=cfg.max_video_bytes, content_types=VIDEO_TYPES)
    return Pipeline(cfg, vision or GrpcVisionPool(cfg.vision_targets, cfg.request_timeout_s, cfg.pool_tls),
                    language or GrpcLanguagePool(cfg.language_targets, cfg.request_timeout_s, cfg.pool_tls),
                    ImageLoader(cfg.max_image_bytes, UrlGuard(images)),
                    RefCache(cfg.ref_cache_ttl_s, cfg.ref_cache_max_entries, redis), GatewayMetrics(new_registry()),
                    VideoLoader(cfg.max_video_bytes, cfg.video_dir, cfg.default_video_frames, cfg.max_video_frames,
                                cfg.max_video_frame_pixels, UrlGuard(videos)))


def url_policy(cfg: GatewayConfig) -> UrlPolicy:
    """What image URLs may reach (videos: the same, with their own size and types)."""
    return UrlPolicy(enabled=cfg.allow_http_images, allow_private=cfg.allow_private_urls,
                     allow_hosts=cfg.allow_url_hosts, only_allowed_hosts=cfg.only_allowed_url_hosts,
                     max_redirects=cfg.max_url_redirects, max_bytes=cfg.max_image_bytes,
                     timeout_s=cfg.image_fetch_timeout_s)


async def serve(cfg: GatewayConfig) -> None:
    """Run REST and gRPC until SIGTERM/SIGINT, then drain and close the pools."""
    pipeline = build_pipeline(cfg)
    await pipeline.vision.start()
    await pipeline.language.start()
    # The public port gets its own message cap; the pools' hops keep the internal one.
    grpc_service = GrpcService([SERVICE_NAME], max_message_bytes=cfg.max_grpc_message_bytes)
    grpc_port = grpc_service.bind(cfg.host, cfg.grpc_port, cfg.tls)
    if cfg.health_port:
        grpc_service.bind_health(cfg.host, cfg.health_port)
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(pipeline), grpc_service.server)
    await grpc_service.start()
    await grpc_service.set_ready()
    ssl = {"ssl_certfile": cfg.tls.cert_file, "ssl_keyfile": cfg.tls.key_file} if cfg.tls.cert_file else {}
    rest = uvicorn.Server(uvicorn.Config(create_app(pipeline), host=cfg.host, port=cfg.port, log_level="warning",
                                         timeout_graceful_shutdown=int(cfg.drain_grace_s), **ssl))
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
