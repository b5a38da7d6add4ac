"""Gateway routing over 2 vision + 2 language replicas on loopback: load spreads, a killed
replica is ejected and its work retried elsewhere with no failed request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from stack.launcher import LocalStack, StackOptions
from tests.conftest import png_bytes
from tests.metrics_scrape import scrape


def _chat(target: str, image: bytes) -> list:
    request = gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=image)),
            gateway_pb2.ChatContentPart(text="Describe it.")])],
        sampling=common_pb2.SamplingParams(max_tokens=8))
    with grpc.insecure_channel(target) as channel:
        return list(gateway_pb2_grpc.GatewayStub(channel).Chat(request, timeout=300))


def _run(stack, seeds) -> list:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda s: _chat(stack.grpc_target, png_bytes(460, 460, seed=s)), seeds))


def test_load_spreads_and_a_dead_replica_costs_no_request(tiny_ckpt, tmp_path):
    opts = StackOptions(checkpoint=tiny_ckpt, device="cpu", dtype="float32", vision_replicas=2, language_replicas=2,
                        log_dir=tmp_path, ready_timeout_s=300)
    with LocalStack(opts) as stack:
        results = _run(stack, range(100, 124))
        assert all(r[-1].finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED for r in results)
        images = [scrape(stack.proc(f"vision-{i}").metrics_url)["dvd:vision_images_encoded_total"] for i in (0, 1)]
        finished = [sum(v for k, v in scrape(stack.proc(f"language-{i}").metrics_url).items()
                        if k.startswith("dvd:language_requests_finished_total")) for i in (0, 1)]
        assert sum(images) == 24 and min(images) >= 24 * 0.2, images  # content-hash routing: ~half each
        assert sum(finished) == 24 and min(finished) >= 24 * 0.2, finished  # least-outstanding

        for name in ("vision-1", "language-1"):
            proc = stack.proc(name)
            proc.popen.kill()
            proc.popen.wait()
        results = _run(stack, range(200, 216))  # about half of these hash to the dead vision replica
        assert all(r[-1].finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED for r in results)
        gateway = scrape(stack.proc("gateway").metrics_url)
        assert gateway.get('dvd:gateway_requests_total{outcome="length"}', 0) == 40
