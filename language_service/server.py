"""Runs one language replica: gRPC and Prometheus `/metrics` up first (liveness), weights
loaded and warmed in a thread, then readiness; SIGTERM drains (in-flight generations finish
within the grace)."""

from __future__ import annotations

import asyncio
import logging

from dvd.checkpoint import resolve_checkpoint
from dvd.config import LanguageConfig
from dvd.grpc_server import GrpcService
from dvd.metrics import MetricsServer, new_registry
from language_service.core import LanguageCore
from language_service.servicer import LanguageServicer
from protos.v1 import language_pb2, language_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = language_pb2.DESCRIPTOR.services_by_name["LanguageDecoder"].full_name


async def serve(cfg: LanguageConfig) -> None:
    service = GrpcService([SERVICE_NAME])
    port = service.bind(cfg.host, cfg.port, cfg.tls)
    if cfg.health_port:
        service.bind_health(cfg.host, cfg.health_port)
    registry = new_registry()
    core = LanguageCore(cfg, resolve_checkpoint(cfg.model), registry=registry)
    language_pb2_grpc.add_LanguageDecoderServicer_to_server(LanguageServicer(core), service.server)
    metrics = MetricsServer(registry, cfg.host, cfg.metrics_port)
    await service.start()
    log.info("language service listening on %s:%d, loading %s", cfg.host, port, cfg.model)
    await asyncio.to_thread(core.load)
    await service.set_ready()
    log.info("language service ready on %s:%d", cfg.host, port)

    async def on_stop() -> None:
        await core.fetcher.close()

    try:
        await service.serve_forever(cfg.drain_grace_s, on_stop=on_stop)
    finally:
        await asyncio.to_thread(core.stop)
        metrics.stop()
