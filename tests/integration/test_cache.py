"""The content-addressed embedding cache, with and without a shared Redis, and the fallback
when Redis dies mid-run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from stack.launcher import LocalStack, StackOptions
from tests.conftest import png_bytes
from tests.metrics_scrape import scrape


def chat(stack, image: bytes, text: str = "Describe it.") -> list:
    request = gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=image)),
            gateway_pb2.ChatContentPart(text=text)])],
        sampling=common_pb2.SamplingParams(max_tokens=6))
    with grpc.insecure_channel(stack.grpc_target) as channel:
        return list(gateway_pb2_grpc.GatewayStub(channel).Chat(request, timeout=120))


def tokens(responses) -> list[int]:
    return [t for r in responses for t in r.token_ids]


def test_repeated_image_is_encoded_once_without_redis(stacks, tiny_ckpt):
    stack = stacks(tiny_ckpt, vision_replicas=2)
    image = png_bytes(700, 400, seed=11)
    first, second = chat(stack, image), chat(stack, image, "Again?")
    assert first[-1].cached_images == 0 and first[-1].timings.encode_ns > 0
    assert second[-1].cached_images == 1 and second[-1].timings.encode_ns == 0
    other = chat(stack, png_bytes(700, 400, seed=12))
    assert other[-1].cached_images == 0


def test_a_burst_of_one_image_runs_the_vit_once(stacks, tiny_ckpt):
    """Six concurrent requests for one new image: the gateway misses six times (nothing is cached
    yet) and routes all six to the replica that owns the key, which encodes once and lets the
    others join that encode."""
    stack = stacks(tiny_ckpt, vision_replicas=2)
    image = png_bytes(900, 500, seed=31)  # 2x1 grid + thumbnail: 3 tiles

    def encoded() -> float:
        return sum(scrape(stack.proc(f"vision-{i}").metrics_url)["dvd:vision_images_encoded_total"] for i in (0, 1))

    before = encoded()
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda i: chat(stack, image, f"Question {i}?"), range(6)))
    assert encoded() - before == 1
    assert sum(r[-1].cached_images for r in replies) == 5
    assert all(r[-1].usage.prompt_tokens > 3 * 256 for r in replies)


def test_redis_cache_survives_the_vision_replica_and_redis_outage(tiny_ckpt, redis_server, tmp_path):
    opts = StackOptions(checkpoint=tiny_ckpt, device="cpu", dtype="float32", redis_url=redis_server.url,
                        log_dir=tmp_path, ready_timeout_s=300)
    with LocalStack(opts) as stack:
        image = png_bytes(600, 600, seed=21)
        first = chat(stack, image)
        assert first[-1].cached_images == 0
        # The vision replica goes away: the repeated image is served from Redis with no vision call.
        vision = stack.proc("vision-0")
        vision.popen.kill()
        vision.popen.wait()
        again = chat(stack, image)
        assert again[-1].cached_images == 1 and tokens(again) == tokens(first)
        with pytest.raises(grpc.RpcError) as info:  # a new image does need the (dead) vision pool
            chat(stack, png_bytes(600, 600, seed=22))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_requests_keep_succeeding_when_redis_dies(tiny_ckpt, redis_server, tmp_path):
    opts = StackOptions(checkpoint=tiny_ckpt, device="cpu", dtype="float32", redis_url=redis_server.url,
                        log_dir=tmp_path, ready_timeout_s=300)
    with LocalStack(opts) as stack:
        cached = png_bytes(500, 300, seed=31)
        before = chat(stack, cached)
        redis_server.stop()
        # A ref that points at Redis falls back to its vision replica's memory ...
        after = chat(stack, cached)
        assert tokens(after) == tokens(before)
        # ... and new images are served from memory only.
        for seed in (32, 33):
            fresh = chat(stack, png_bytes(500, 300, seed=seed))
            assert fresh[-1].finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
