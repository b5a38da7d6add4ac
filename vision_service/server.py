"""Runs one vision replica: gRPC and Prometheus `/metrics` up first (liveness), weights loaded and warmed in a thread,
then readiness; SIGTERM drains."""

from __future__ import annotations

import asyncio
import logging

from dvd.checkpoint import resolve_checkpoint
from dvd.config import VisionConfig
from dvd.grpc_server import GrpcService
from dvd.metrics import MetricsServer, new_registry
from protos.v1 import vision_pb2, vision_pb2_grpc
from vision_service.core import VisionCore
from vision_service.metrics import VisionMetrics
from vision_service.servicer import VisionServicer

log = logging.getLogger(__name__)

SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionEncoder"].full_name


async def serve(cfg: VisionConfig) -> None:
    service = GrpcService([SERVICE_NAME])
    port = service.bind(cfg.host, cfg.port, cfg.tls)
    if cfg.health_port:
        service.bind_health(cfg.host, cfg.health_port)
    advertise = cfg.advertise or f"{cfg.host}:{port}"
    registry = new_registry()
    core = VisionCore(cfg, resolve_checkpoint(cfg.model), location=f"grpc://{advertise}",
                      metrics=VisionMetrics(registry))
    vision_pb2_grpc.add_VisionEncoderServicer_to_server(VisionServicer(core), service.server)
    metrics = MetricsServer(registry, cfg.host, cfg.metrics_port)
    await service.start()
    log.info("vision service listening on %s:%d, loading %s", cfg.host, port, cfg.model)
    await asyncio.to_thread(core.load)
    core.start()
    await service.set_ready()
    log.info("vision service ready on %s:%d", cfg.host, port)
    try:
        # Linger: embeddings encoded just before SIGTERM stay fetchable while their requests finish.
        await service.serve_forever(cfg.drain_grace_s, on_stop=core.stop, linger_s=cfg.linger_s)
    finally:
        metrics.stop()
