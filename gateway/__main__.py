"""`python -m gateway --vision HOST:PORT --language HOST:PORT`: the OpenAI REST + gRPC front door."""

from __future__ import annotations

import argparse
import asyncio
import os

from dvd.config import GatewayConfig
from dvd.flags import (
    add_client_tls,
    add_cpus,
    add_redis,
    add_server_tls,
    client_tls,
    parse_cpus,
    pin_cpus,
    read_secret,
    server_tls,
    setup_logging,
)
from gateway.auth import parse_keys
from gateway.server import serve

API_KEYS_ENV = "DVD_API_KEYS"  # the keys themselves (comma-separated KEY[:TENANT]), when no file is given


def parse_config(argv: list[str] | None = None) -> GatewayConfig:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    spec = "HOST:PORT, or a discovery spec: static:H:P,H:P | dns:NAME:PORT | k8s:NAMESPACE/SERVICE:PORT (repeatable)"
    p.add_argument("--vision", action="append", required=True, help=f"vision pool: {spec}")
    p.add_argument("--language", action="append", required=True, help=f"language pool: {spec}")
    p.add_argument("--model-name", default="internvl", help="the model id clients send")
    p.add_argument("--model-root", default="", help="checkpoint path or hub id, shown in /v1/models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="REST port")
    p.add_argument("--grpc-port", type=int, default=50050)
    p.add_argument("--max-image-mib", type=float, default=20)
    p.add_argument("--max-images-per-request", type=int, default=16)
    p.add_argument("--image-fetch-timeout-s", type=float, default=10.0)
    p.add_argument("--no-http-images", "--no-url-fetch", dest="no_http_images", action="store_true",
                   help="never fetch http(s) image or video URLs: accept only inline/data: media")
    p.add_argument("--video-dir", default="",
                   help="serve file:// video URLs from under this directory (default: refuse file:// URLs)")
    p.add_argument("--max-video-mib", type=float, default=256)
    p.add_argument("--video-frames", type=int, default=8, help="frames sampled per video unless the request says")
    p.add_argument("--max-video-frames", type=int, default=64, help="most video frames in one request")
    add_redis(p, "the shared embedding cache")
    p.add_argument("--ref-cache-ttl-s", type=float, default=300.0,
                   help="how long the gateway reuses an embedding ref; keep it below the vision --store-ttl-s")
    p.add_argument("--ref-cache-entries", type=int, default=100_000, help="most refs the gateway remembers")
    p.add_argument("--drain-grace-s", type=float, default=30.0)
    p.add_argument("--request-timeout-s", type=float, default=600.0,
                   help="every request's deadline (a client's gRPC deadline or x-request-timeout-s may shorten it)")
    p.add_argument("--max-concurrent-requests", type=int, default=256,
                   help="requests in flight; beyond it a fast 429 / RESOURCE_EXHAUSTED with Retry-After (0: no bound)")
    p.add_argument("--max-inflight-mib", type=float, default=1024,
                   help="media bytes held by requests in flight; beyond it a fast 429 (0: no bound)")
    p.add_argument("--replica-wait-s", type=float, default=15.0,
                   help="how long a call waits for a live replica when a pool has none, before a 503 (keep it "
                        "above 2 s, the channels' longest reconnect backoff: a replica that has just come back "
                        "can take that long to be reached)")
    p.add_argument("--log-level", default="INFO")
    add_cpus(p)
    _add_security(p)
    a = p.parse_args(argv)
    setup_logging(a.log_level)
    pin_cpus(parse_cpus(a.cpus))  # at startup, before the servers start their threads
    return GatewayConfig(
        vision_targets=tuple(a.vision), language_targets=tuple(a.language), model_name=a.model_name,
        model_root=a.model_root, host=a.host, port=a.port, grpc_port=a.grpc_port,
        max_image_bytes=int(a.max_image_mib * 1024 * 1024), max_images_per_request=a.max_images_per_request,
        image_fetch_timeout_s=a.image_fetch_timeout_s, allow_http_images=not a.no_http_images, redis_url=a.redis,
        video_dir=a.video_dir, max_video_bytes=int(a.max_video_mib * 1024 * 1024),
        default_video_frames=a.video_frames, max_video_frames=a.max_video_frames, drain_grace_s=a.drain_grace_s,
        ref_cache_ttl_s=a.ref_cache_ttl_s, ref_cache_max_entries=a.ref_cache_entries,
        allow_private_urls=a.allow_private_urls, allow_url_hosts=_hosts(a.allow_url_hosts),
        only_allowed_url_hosts=a.only_allowed_url_hosts, max_url_redirects=a.max_url_redirects,
        api_keys=parse_keys(read_secret(a.api_keys_file) if a.api_keys_file else os.environ.get(API_KEYS_ENV, "")),
        auth_health=a.auth_health, auth_metrics=a.auth_metrics, tenant_header=a.tenant_header,
        max_body_bytes=int(a.max_body_mib * 1024 * 1024),
        max_grpc_message_bytes=int(a.max_grpc_message_mib * 1024 * 1024), tls=server_tls(a),
        health_port=a.health_port, pool_tls=client_tls(a, "pool-tls"), redis_tls=client_tls(a, "redis-tls"),
        redis_password=read_secret(a.redis_password_file),
        request_timeout_s=a.request_timeout_s, max_concurrent_requests=a.max_concurrent_requests,
        max_inflight_bytes=int(a.max_inflight_mib * 1024 * 1024), replica_wait_s=a.replica_wait_s,
    )


def _add_security(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let image/video URLs reach loopback, private and link-local addresses (never metadata)")
    p.add_argument("--allow-url-hosts", action="append", default=[],
                   help="host (or .domain) whose URLs may resolve to internal addresses; repeatable, comma-separated")
    p.add_argument("--only-allowed-url-hosts", action="store_true", help="fetch URLs of --allow-url-hosts only")
    p.add_argument("--max-url-redirects", type=int, default=3)
    p.add_argument("--api-keys-file", default="",
                   help=f"file of API keys, one `KEY [TENANT]` a line (else ${API_KEYS_ENV}); none: no auth")
    p.add_argument("--auth-health", action="store_true", help="/health needs an API key too")
    p.add_argument("--auth-metrics", action="store_true", help="/metrics needs an API key too")
    p.add_argument("--tenant-header", default="",
                   help="trusted request header (set by your auth proxy) naming the tenant of the cache")
    p.add_argument("--max-body-mib", type=float, default=128, help="largest REST request body (413 beyond)")
    p.add_argument("--max-grpc-message-mib", type=float, default=64, help="largest message on the public gRPC port")
    add_server_tls(p)
    add_client_tls(p, "pool-tls", "the vision and language replicas")


def _hosts(values: list[str]) -> tuple[str, ...]:
    return tuple(h.strip().lower() for v in values for h in v.split(",") if h.strip())


if __name__ == "__main__":
    asyncio.run(serve(parse_config()))
