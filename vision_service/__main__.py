"""`python -m vision_service --model DIR`: one vision replica (InternViT + projector, + the ViR router on
InternVL3.5-Flash checkpoints)."""

from __future__ import annotations

import argparse
import asyncio

from dvd.config import RESIZE_ON_DEVICE, VisionConfig
from dvd.flags import add_common, add_redis, client_tls, device_config, read_secret, server_tls, setup_logging
from dvd.types import Codec, Compression, VirMode
from vision_service.server import serve


def parse_config(argv: list[str] | None = None) -> VisionConfig:
    p = argparse.ArgumentParser(prog="python -m vision_service", description=__doc__)
    add_common(p, default_port=50051)
    p.add_argument("--advertise", default="", help="host:port that language replicas fetch from")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: a free one)")
    p.add_argument("--codec", choices=[c.value for c in Codec], help="default: the compute dtype")
    p.add_argument("--compression", choices=[c.value for c in Compression], default="none")
    p.add_argument("--vir", choices=[m.value for m in VirMode],
                   help="default router mode (Flash checkpoints); default: auto if the checkpoint sets flash_mode")
    p.add_argument("--vir-relative-threshold", type=float,
                   help="auto: compress only tiles scoring above this quantile of the request's scores "
                        "(default: the checkpoint's flash_relative_threshold)")
    p.add_argument("--vir-absolute-threshold", type=float,
                   help="auto: compress only tiles scoring at least this (default: flash_absolute_threshold)")
    p.add_argument("--route-cache-mib", type=int, default=256,
                   help="ViT output kept between the Route and Encode of a multi-image auto request")
    p.add_argument("--min-tiles", type=int, default=1)
    p.add_argument("--max-tiles", type=int, default=12)
    p.add_argument("--no-thumbnail", action="store_true")
    p.add_argument("--max-batch-tiles", type=int, default=0,
                   help="tiles per ViT forward (images join a batch while they fit); 0: 2 on CPU, 32 on GPU")
    p.add_argument("--preprocess-workers", type=int, default=0,
                   help="threads that decode, resize and tile images; 0: one per CPU this process may use")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode JPEGs at least twice the tile canvas at 1/2-1/8 size (faster; changes pixels)")
    p.add_argument("--resize-on-device", choices=RESIZE_ON_DEVICE, default="auto",
                   help="resize and tile on the ViT's device, bit-identical to Pillow (auto: on CUDA)")
    p.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue-images", type=int, default=256)
    p.add_argument("--max-queue-tiles", type=int, default=1024,
                   help="tiles waiting for the ViT; beyond it: RESOURCE_EXHAUSTED (429 at the gateway)")
    p.add_argument("--store-max-mib", type=int, default=2048)
    p.add_argument("--store-ttl-s", type=float, default=600.0)
    p.add_argument("--linger-s", type=float, default=5.0,
                   help="after SIGTERM, keep serving embedding fetches this long before draining")
    add_redis(p, "also publish embeddings there (shared cache)")
    a = p.parse_args(argv)
    setup_logging(a.log_level)
    return VisionConfig(
        model=a.model, host=a.host, port=a.port, advertise=a.advertise, metrics_port=a.metrics_port,
        device=device_config(a),
        codec=Codec(a.codec) if a.codec else None, compression=Compression(a.compression),
        vir=VirMode(a.vir) if a.vir else None, vir_relative_threshold=a.vir_relative_threshold,
        vir_absolute_threshold=a.vir_absolute_threshold, route_cache_bytes=a.route_cache_mib * 1024 * 1024,
        min_tiles=a.min_tiles, max_tiles=a.max_tiles, use_thumbnail=not a.no_thumbnail,
        max_batch_tiles=a.max_batch_tiles, max_batch_wait_ms=a.max_batch_wait_ms,
        preprocess_workers=a.preprocess_workers, fast_decode=a.fast_decode,
        resize_on_device=a.resize_on_device,
        max_queue_images=a.max_queue_images, store_max_bytes=a.store_max_mib * 1024 * 1024,
        store_ttl_s=a.store_ttl_s, redis_url=a.redis, linger_s=a.linger_s, drain_grace_s=a.drain_grace_s,
        tls=server_tls(a), health_port=a.health_port, redis_tls=client_tls(a, "redis-tls"),
        redis_password=read_secret(a.redis_password_file),
        max_queue_tiles=a.max_queue_tiles,
    )


if __name__ == "__main__":
    asyncio.run(serve(parse_config()))
