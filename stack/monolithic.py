"""`python -m stack.monolithic`: vision and language halves in one process (the colocated
baseline). One gRPC server hosts both services; the language half reads embeddings straight
from the vision half's store, so nothing crosses a socket between them."""

from __future__ import annotations

import argparse
import asyncio
import logging

from dvd.checkpoint import resolve_checkpoint
from dvd.config import LanguageConfig, VisionConfig
from dvd.flags import add_common, add_decode_attention, device_config, server_tls, setup_logging
from dvd.grpc_server import GrpcService
from dvd.metrics import MetricsServer, new_registry
from language_service.core import LanguageCore
from language_service.server import SERVICE_NAME as LANGUAGE_SERVICE
from language_service.servicer import LanguageServicer
from protos.v1 import language_pb2_grpc, vision_pb2_grpc
from vision_service.core import VisionCore
from vision_service.metrics import VisionMetrics
from vision_service.server import SERVICE_NAME as VISION_SERVICE
from vision_service.servicer import VisionServicer

log = logging.getLogger(__name__)


async def serve(vision_cfg: VisionConfig, language_cfg: LanguageConfig) -> None:
    service = GrpcService([VISION_SERVICE, LANGUAGE_SERVICE])
    port = service.bind(vision_cfg.host, vision_cfg.port, vision_cfg.tls)
    if vision_cfg.health_port:
        service.bind_health(vision_cfg.host, vision_cfg.health_port)
    checkpoint = resolve_checkpoint(vision_cfg.model)
    registry = new_registry()
    vision = VisionCore(vision_cfg, checkpoint, location=f"local://{vision_cfg.host}:{port}",
                        metrics=VisionMetrics(registry))
    language = LanguageCore(language_cfg, checkpoint, local_stores={vision.location: vision.store}, registry=registry)
    metrics = MetricsServer(registry, vision_cfg.host, vision_cfg.metrics_port)
    vision_pb2_grpc.add_VisionEncoderServicer_to_server(VisionServicer(vision), service.server)
    language_pb2_grpc.add_LanguageDecoderServicer_to_server(LanguageServicer(language), service.server)
    await service.start()
    await asyncio.to_thread(vision.load)
    await asyncio.to_thread(language.load)
    vision.start()
    await service.set_ready()
    log.info("monolithic service (vision + language) ready on %s:%d", vision_cfg.host, port)
    try:
        await service.serve_forever(vision_cfg.drain_grace_s, on_stop=vision.stop)
    finally:
        await asyncio.to_thread(language.stop)
        metrics.stop()


def parse_configs(argv: list[str] | None = None) -> tuple[VisionConfig, LanguageConfig]:
    p = argparse.ArgumentParser(prog="python -m stack.monolithic", description=__doc__)
    add_common(p, default_port=50051)
    p.add_argument("--attn-implementation", default="auto")
    p.add_argument("--max-running-seqs", type=int, default=16)
    p.add_argument("--batch-invariant", action="store_true", help="bit-exact solo == batched outputs (slower)")
    p.add_argument("--no-prefix-caching", action="store_true", help="prefill every prompt in full")
    add_decode_attention(p)
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: a free one)")
    p.add_argument("--chat-template", default="checkpoint", help="checkpoint | internvl2_5 | PATH.jinja")
    a = p.parse_args(argv)
    setup_logging(a.log_level)
    device = device_config(a)
    vision_cfg = VisionConfig(model=a.model, host=a.host, port=a.port, device=device, drain_grace_s=a.drain_grace_s,
                              metrics_port=a.metrics_port, tls=server_tls(a), health_port=a.health_port)
    language_cfg = LanguageConfig(model=a.model, host=a.host, port=a.port, device=device,
                                  max_running_seqs=a.max_running_seqs, drain_grace_s=a.drain_grace_s,
                                  chat_template=a.chat_template, batch_invariant=a.batch_invariant,
                                  prefix_caching=not a.no_prefix_caching, decode_attention=a.decode_attention)
    return vision_cfg, language_cfg


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(*parse_configs(argv)))


if __name__ == "__main__":
    main()
