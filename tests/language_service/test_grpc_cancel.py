"""Through a real gRPC server (LanguageCore + servicer + the shared interceptor, in-process on
loopback): a client that goes away aborts its sequence and the freed slot admits the waiting
request; Abort(request_id) does the same; a full queue is RESOURCE_EXHAUSTED; and the
Prometheus exporter serves the engine's metrics."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import grpc
import pytest

from dvd.config import DeviceConfig, LanguageConfig
from dvd.grpc_server import GrpcService
from dvd.metrics import MetricsServer, new_registry
from language_service.core import LanguageCore
from language_service.server import SERVICE_NAME
from language_service.servicer import LanguageServicer
from protos.v1 import common_pb2, language_pb2, language_pb2_grpc

LONG = 3000  # tokens: far more than a test waits for


@contextlib.asynccontextmanager
async def language_server(checkpoint):
    """One running slot and one queue place, so the third concurrent request is refused."""
    cfg = LanguageConfig(model=str(checkpoint), device=DeviceConfig(device="cpu", dtype="float32"),
                         max_running_seqs=1, max_queue=1)
    registry = new_registry()
    core = LanguageCore(cfg, checkpoint, registry=registry)
    await asyncio.to_thread(core.load)
    service = GrpcService([SERVICE_NAME])
    port = service.bind("127.0.0.1", 0)
    language_pb2_grpc.add_LanguageDecoderServicer_to_server(LanguageServicer(core), service.server)
    await service.start()
    await service.set_ready()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield language_pb2_grpc.LanguageDecoderStub(channel), registry
    finally:
        await channel.close()
        await service.server.stop(0)
        await asyncio.to_thread(core.stop)


def _request(request_id: str, max_tokens: int) -> language_pb2.GenerateRequest:
    message = language_pb2.ChatMessage(role="user", content=[language_pb2.ContentPart(text=f"{request_id}, go on")])
    return language_pb2.GenerateRequest(request_id=request_id, messages=[message],
                                        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))


async def _until(registry, name: str, value: float, labels: dict | None = None, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while registry.get_sample_value(name, labels or {}) != value:
            await asyncio.sleep(0.01)


async def _read_all(call) -> list:
    replies = []
    while (reply := await call.read()) != grpc.aio.EOF:
        replies.append(reply)
    return replies


async def test_client_cancel_frees_the_slot_for_the_waiting_request(tiny_ckpt):
    async with language_server(tiny_ckpt) as (stub, registry):
        first = stub.Generate(_request("first", LONG))
        assert (await first.read()).token_ids  # streaming: it holds the only slot
        second = stub.Generate(_request("second", 5))
        await _until(registry, "dvd:language_waiting_seqs", 1)
        first.cancel()  # the client goes away mid-stream
        replies = await asyncio.wait_for(_read_all(second), timeout=30)
        assert sum(len(r.token_ids) for r in replies) == 5
        assert replies[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
        await _until(registry, "dvd:language_requests_finished_total", 1, {"finish_reason": "abort"})
        await _until(registry, "dvd:language_running_seqs", 0)


async def test_abort_rpc_ends_the_stream_and_admits_the_next(tiny_ckpt):
    async with language_server(tiny_ckpt) as (stub, registry):
        first = stub.Generate(_request("first", LONG))
        await first.read()
        second = stub.Generate(_request("second", 4))
        await _until(registry, "dvd:language_waiting_seqs", 1)
        assert (await stub.Abort(language_pb2.AbortRequest(request_id="first"))).found
        replies = await asyncio.wait_for(_read_all(first), timeout=30)
        assert replies[-1].finish_reason == common_pb2.FINISH_REASON_ABORT
        assert sum(len(r.token_ids) for r in await asyncio.wait_for(_read_all(second), timeout=30)) == 4
        assert not (await stub.Abort(language_pb2.AbortRequest(request_id="first"))).found


async def test_full_queue_is_resource_exhausted(tiny_ckpt):
    async with language_server(tiny_ckpt) as (stub, registry):
        first = stub.Generate(_request("first", LONG))
        await first.read()
        second = stub.Generate(_request("second", LONG))
        await _until(registry, "dvd:language_waiting_seqs", 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _read_all(stub.Generate(_request("third", 4)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after", "1") in tuple(refused.value.trailing_metadata())  # the client's cue to back off
        assert registry.get_sample_value("dvd:language_requests_rejected_total") == 1
        first.cancel()
        second.cancel()
        await _until(registry, "dvd:language_queue_depth", 0)


async def test_metrics_endpoint_serves_the_engine_metrics(tiny_ckpt):
    async with language_server(tiny_ckpt) as (stub, registry):
        await _read_all(stub.Generate(_request("one", 3)))
        server = MetricsServer(registry, "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        finally:
            server.stop()
    for name in ("dvd:language_running_seqs", "dvd:language_waiting_seqs", "dvd:language_queue_depth",
                 "dvd:language_kv_usage_ratio", "dvd:language_step_seconds_bucket",
                 "dvd:language_prefill_tokens_total", "dvd:language_decode_tokens_total", "process_cpu_seconds_total"):
        assert name in body, name
    assert 'dvd:language_requests_finished_total{finish_reason="length"} 1.0' in body
