"""The two ways `dvd bench serve` talks to a gateway: OpenAI streaming chat completions over REST
(SSE, httpx) and `Gateway.Chat` over gRPC. Each turns one `BenchRequest` into one
`RequestRecord`: client-side timings of every token-carrying chunk, the token counts, and the
server-side stage timings and cache hits that the final chunk carries. Failures become records
with an error kind (`http_503`, `grpc_UNAVAILABLE`, `timeout`, `connect`, `stream_error`, ...)."""

from __future__ import annotations

import json
import time
from typing import Protocol

import grpc
import httpx

from dvd.grpc_options import channel_options
from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tools.bench.metrics import STAGES, RequestRecord, inter_token_latencies
from tools.bench.workload import BenchRequest


class BenchClient(Protocol):
    async def send(self, request: BenchRequest, t0: float) -> RequestRecord: ...

    async def close(self) -> None: ...


def _stage_seconds(timings: dict) -> dict[str, float]:
    return {stage: int(timings.get(f"{stage}_ns", 0)) / 1e9 for stage in STAGES}


def _finish(record: RequestRecord, sent: float, chunk_times: list[float], end: float) -> RequestRecord:
    record.ttft_s = chunk_times[0] - sent if chunk_times else None
    record.itl_s = inter_token_latencies(chunk_times)
    record.e2e_s = end - sent
    record.ok = bool(chunk_times) and not record.error_kind
    if not chunk_times and not record.error_kind:
        record.error_kind, record.error = "empty_reply", "the stream ended without output tokens"
    return record


class RestClient:
    """POST {base_url}/chat/completions with stream=true, include_usage and ignore_eos."""

    def __init__(self, base_url: str, model: str, timeout_s: float, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, limits=limits)
        self.model = model

    def body(self, request: BenchRequest) -> dict:
        content = [{"type": "image_url", "image_url": {"url": url}} for url in request.data_urls]
        content.append({"type": "text", "text": request.prompt})
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": request.max_tokens,
                "temperature": 0, "ignore_eos": True}

    async def send(self, request: BenchRequest, t0: float) -> RequestRecord:
        body = self.body(request)
        sent = time.perf_counter()
        record = RequestRecord(sent_s=sent - t0, num_images=len(request.images), num_tiles=request.num_tiles)
        chunk_times: list[float] = []
        try:
            async with self.http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    record.error_kind, record.error = f"http_{response.status_code}", text[:500]
                else:
                    await self._read_events(response, record, chunk_times)
        except httpx.TimeoutException as exc:
            record.error_kind, record.error = "timeout", repr(exc)
        except httpx.TransportError as exc:
            record.error_kind, record.error = "connect", repr(exc)
        return _finish(record, sent, chunk_times, time.perf_counter())

    @staticmethod
    async def _read_events(response: httpx.Response, record: RequestRecord, chunk_times: list[float]) -> None:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            event = json.loads(line[len("data: "):])
            if "error" in event:
                record.error_kind = "stream_" + str(event["error"].get("type") or "error")
                record.error = str(event["error"].get("message"))[:500]
                continue
            if any(choice.get("delta", {}).get("content") for choice in event.get("choices", [])):
                chunk_times.append(now)
            if event.get("usage"):
                record.output_tokens = event["usage"]["completion_tokens"]
                record.prompt_tokens = event["usage"]["prompt_tokens"]
            if "dvd" in event:
                record.stage_s = _stage_seconds(event["dvd"].get("timings", {}))
                record.cached_images = event["dvd"].get("cached_images", 0)

    async def close(self) -> None:
        await self.http.aclose()


class GrpcClient:
    """`dvd.v1.Gateway/Chat` (server streaming), ignore_eos, greedy."""

    def __init__(self, target: str, model: str, timeout_s: float) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=channel_options(client=True))
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.model, self.timeout_s = model, timeout_s

    def message(self, request: BenchRequest) -> gateway_pb2.ChatRequest:
        parts = [gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=image.data))
                 for image in request.images]
        parts.append(gateway_pb2.ChatContentPart(text=request.prompt))
        sampling = common_pb2.SamplingParams(max_tokens=request.max_tokens, temperature=0, ignore_eos=True)
        return gateway_pb2.ChatRequest(model=self.model, messages=[gateway_pb2.ChatTurn(role="user", content=parts)],
                                       sampling=sampling)

    async def send(self, request: BenchRequest, t0: float) -> RequestRecord:
        message = self.message(request)
        sent = time.perf_counter()
        record = RequestRecord(sent_s=sent - t0, num_images=len(request.images), num_tiles=request.num_tiles)
        chunk_times: list[float] = []
        try:
            async for reply in self.stub.Chat(message, timeout=self.timeout_s):
                if reply.token_ids:
                    chunk_times.append(time.perf_counter())
                    record.output_tokens += len(reply.token_ids)
                if reply.finish_reason:
                    record.prompt_tokens = reply.usage.prompt_tokens
                    record.cached_images = reply.cached_images
                    record.stage_s = {stage: getattr(reply.timings, f"{stage}_ns") / 1e9 for stage in STAGES}
        except grpc.aio.AioRpcError as exc:
            kind = "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else f"grpc_{exc.code().name}"
            record.error_kind, record.error = kind, (exc.details() or "")[:500]
        return _finish(record, sent, chunk_times, time.perf_counter())

    async def close(self) -> None:
        await self.channel.close()
