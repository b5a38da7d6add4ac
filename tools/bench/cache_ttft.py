"""TTFT of a cache hit vs a miss through a live stack: the same 5-tile image sent twice; the
second request skips the vision pool. Method: for each of `images` distinct images, one miss
then one hit, sequentially (no other load); TTFT = time to the first streamed token over the
gateway's gRPC API; medians reported. `dvd bench transport` runs it with the language replica's
prefix cache off, so the hit saves the vision pool's work and nothing else."""

from __future__ import annotations

import statistics
import time

import grpc

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


def _request(image: bytes, max_tokens: int) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=image)),
            gateway_pb2.ChatContentPart(text="Describe this image.")])],
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens))


def ttft_s(stub, image: bytes, max_tokens: int = 8) -> tuple[float, int]:
    """(seconds to the first token, cached_images of the request)."""
    started = time.perf_counter()
    first = None
    cached = 0
    for reply in stub.Chat(_request(image, max_tokens), timeout=600):
        if first is None and reply.token_ids:
            first = time.perf_counter() - started
        cached = reply.cached_images or cached
    return first, cached


def bench_cache_ttft(grpc_target: str, images: list[bytes]) -> dict[str, float]:
    misses, hits = [], []
    with grpc.insecure_channel(grpc_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        ttft_s(stub, images[0])  # warm-up (not counted, and that image is not reused)
        for image in images[1:]:
            miss, cached_miss = ttft_s(stub, image)
            hit, cached_hit = ttft_s(stub, image)
            if cached_miss != 0 or cached_hit != 1:
                raise RuntimeError(f"expected a miss then a hit, got cached={cached_miss}, {cached_hit}")
            misses.append(miss)
            hits.append(hit)
    miss, hit = statistics.median(misses), statistics.median(hits)
    return {"miss_ttft_ms": miss * 1000, "hit_ttft_ms": hit * 1000, "hit_over_miss": hit / miss}
