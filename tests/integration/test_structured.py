"""Structured outputs and logprobs through a real stack (gateway + vision + language processes on
loopback) with the official `openai` client and the gRPC API, on the random-init tiny model."""

from __future__ import annotations

import json
import re
from typing import Literal

import grpc
import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

MESSAGES = [{"role": "user", "content": "Fill in the invoice as JSON."}]
INVOICE = {
    "type": "object", "additionalProperties": False, "required": ["number", "lines", "paid"],
    "properties": {
        "number": {"type": "integer", "minimum": 1, "maximum": 999},
        "lines": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "additionalProperties": False, "required": ["item", "qty"],
            "properties": {"item": {"enum": ["pen", "ink", "pad"]},
                           "qty": {"type": "integer", "minimum": 1, "maximum": 9}}}},
        "paid": {"type": "boolean"}}}


class Reading(BaseModel):
    """What the client's `parse` helper turns into a strict json_schema."""

    unit: Literal["kg", "lb"]
    value: int = Field(ge=0, le=500)
    label: str = Field(max_length=4)
    checked: bool


@pytest.fixture(scope="module")
def stack(stacks, tiny_ckpt):
    return stacks(tiny_ckpt)


@pytest.fixture(scope="module")
def client(stack) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key="unused", timeout=120)


def _json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema, "strict": True}}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_answers_validate(client, temperature):
    reply = client.chat.completions.create(model="internvl", messages=MESSAGES, max_tokens=96, seed=4,
                                           temperature=temperature, response_format=_json_schema(INVOICE))
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), INVOICE)


def test_the_clients_parse_helper_gets_a_valid_object(client):
    reply = client.chat.completions.parse(model="internvl", messages=MESSAGES, max_tokens=64, temperature=0,
                                          response_format=Reading)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Reading) and 0 <= parsed.value <= 500


def test_logprobs_parse_and_agree_streamed_and_not(client):
    kwargs = dict(model="internvl", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    reply = client.chat.completions.create(**kwargs)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 8
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob == entry.top_logprobs[0].logprob <= 0
        assert entry.token == entry.top_logprobs[0].token and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    streamed = [e for chunk in client.chat.completions.create(**kwargs, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for e in chunk.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    plain = client.chat.completions.create(model="internvl", messages=MESSAGES, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_guided_choice_and_regex_as_vllm_extensions(client):
    choices = ["approved", "rejected", "needs review"]
    picked = client.chat.completions.create(model="internvl", messages=MESSAGES, max_tokens=16, temperature=1.0,
                                            seed=1, extra_body={"guided_choice": choices})
    assert picked.choices[0].message.content in choices
    regex = r"INV-\d{4}"
    matched = client.chat.completions.create(model="internvl", messages=MESSAGES, max_tokens=16, temperature=0,
                                             extra_body={"guided_regex": regex})
    assert re.fullmatch(regex, matched.choices[0].message.content)


def test_json_object_mode_streams_a_prefix_of_an_object(client):
    chunks = list(client.chat.completions.create(model="internvl", messages=MESSAGES, max_tokens=6, stream=True,
                                                 response_format={"type": "json_object"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("{")
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("extra, needle", [
    ({"response_format": _json_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})},
     "missing"),
    ({"guided_regex": "(unclosed"}, "parenthesis"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "exclude"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_guides_and_logprobs_are_400s_naming_the_problem(client, extra, needle, stream):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="internvl", messages=MESSAGES, max_tokens=4, stream=stream,
                                       extra_body=extra)
    assert needle in info.value.message and info.value.body["type"] == "invalid_request_error"


def test_grpc_json_schema_with_logprobs(stack):
    sampling = common_pb2.SamplingParams(
        max_tokens=96, logprobs=True, top_logprobs=2,
        guided=common_pb2.GuidedDecoding(json_schema=common_pb2.JsonSchema(name="invoice", schema=json.dumps(INVOICE),
                                                                           strict=True)))
    request = gateway_pb2.ChatRequest(messages=[gateway_pb2.ChatTurn(role="user", content=[
        gateway_pb2.ChatContentPart(text=MESSAGES[0]["content"])])], sampling=sampling)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        responses = list(stub.Chat(request, timeout=120))
        assert responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
        jsonschema.validate(json.loads("".join(r.text for r in responses)), INVOICE)
        assert sum(len(r.logprobs) for r in responses) == sum(len(r.token_ids) for r in responses)
        entries = [e for r in responses for e in r.logprobs]
        assert all(1 <= len(e.top) <= 2 for e in entries)  # fewer where the grammar allows one token only
        assert all(e.chosen.token_id == e.top[0].token_id for e in entries)  # greedy
        request.sampling.guided.json_schema.schema = "[1, 2"
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(request, timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not valid JSON" in info.value.details()
