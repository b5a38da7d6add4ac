"""Bad input gets a clear error (OpenAI error JSON on REST, a proper status on gRPC) and the
services stay up: a good request right after still succeeds."""

from __future__ import annotations

import grpc
import httpx
import pytest

from protos.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    language_pb2,
    language_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from tests.integration.bad_inputs import ACCEPTED, BAD_BODIES, GOOD, post
from tests.integration.cases import RED


@pytest.fixture(scope="module")
def stack(stacks, tiny_ckpt):
    return stacks(tiny_ckpt)


def test_rest_bad_input_is_an_openai_error(stack):
    """Every class (tests.integration.bad_inputs), streamed and not; the gateway stays up."""
    with httpx.Client(timeout=60) as client:
        for name, (body, status) in BAD_BODIES.items():
            for stream in (False, True) if isinstance(body, dict) else (False,):
                reply = post(client, f"{stack.base_url}/chat/completions", body, stream)
                assert reply.status_code == status, (name, reply.text)
                error = reply.json()["error"]
                assert error["message"] and error["type"], error
        for name, body in ACCEPTED.items():
            assert post(client, f"{stack.base_url}/chat/completions", body).status_code == 200, name
        good = client.post(f"{stack.base_url}/chat/completions", json=GOOD)
        assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_unsupported_fields_are_named(stack):
    for field in ("tools", "tool_choice", "audio", "logit_bias"):
        body, _ = BAD_BODIES[field]
        error = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=60).json()["error"]
        assert error["param"] == field and field in error["message"]


def test_gateway_does_not_fetch_its_own_metrics(stack):
    """The issue's probe: an image_url at the gateway's own /metrics is refused before any fetch."""
    metrics = f"http://127.0.0.1:{stack.rest_port}/metrics"
    reply = httpx.post(f"{stack.base_url}/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": metrics}}]}]}, timeout=60)
    assert reply.status_code == 400 and "loopback" in reply.json()["error"]["message"]
    assert "bytes" not in reply.text and "dvd_" not in reply.text


def test_rest_malformed_json(stack):
    reply = httpx.post(f"{stack.base_url}/chat/completions", content=b"{not json",
                       headers={"content-type": "application/json"}, timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


def test_grpc_bad_image_is_invalid_argument(stack):
    bad = gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=b"\x89PNG garbage")),
            gateway_pb2.ChatContentPart(text="?")])],
        sampling=common_pb2.SamplingParams(max_tokens=2))
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(bad, timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "decode" in info.value.details()
        unknown = gateway_pb2.ChatRequest(model="nope", messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(text="hi")])])
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(unknown, timeout=60))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        ok = gateway_pb2.ChatRequest(messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(text="hi")])], sampling=common_pb2.SamplingParams(max_tokens=2))
        assert list(stub.Chat(ok, timeout=60))[-1].finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED


def test_pool_services_reject_bad_calls_directly(stack):
    with grpc.insecure_channel(stack.vision_targets[0]) as channel:
        vision = vision_pb2_grpc.VisionEncoderStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            vision.Encode(vision_pb2.EncodeRequest(image=b""), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            list(vision.FetchEmbedding(vision_pb2.FetchEmbeddingRequest(key="missing"), timeout=30))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        ref = vision.Encode(vision_pb2.EncodeRequest(image=RED), timeout=60).ref
    with grpc.insecure_channel(stack.language_targets[0]) as channel:
        language = language_pb2_grpc.LanguageDecoderStub(channel)
        tampered = language_pb2.GenerateRequest(
            messages=[language_pb2.ChatMessage(role="user", content=[language_pb2.ContentPart(image_index=0)])],
            images=[common_pb2.EmbeddingRef(**{**_ref_fields(ref), "checksum": "0" * 32})])
        with pytest.raises(grpc.RpcError) as info:
            list(language.Generate(tampered, timeout=60))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        out_of_range = language_pb2.GenerateRequest(
            messages=[language_pb2.ChatMessage(role="user", content=[language_pb2.ContentPart(image_index=3)])],
            images=[ref])
        with pytest.raises(grpc.RpcError) as info:
            list(language.Generate(out_of_range, timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _ref_fields(ref) -> dict:
    return {f.name: getattr(ref, f.name) for f in ref.DESCRIPTOR.fields}
