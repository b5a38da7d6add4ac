"""End to end through real processes: gateway + vision + language on loopback (and the
monolithic mode), compared token for token with `InternVLForConditionalGeneration.generate`."""

from __future__ import annotations

import grpc
import pytest
from openai import OpenAI

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.cases import CASES, ask_openai_about_an_image
from tests.reference import Reference

MAX_TOKENS = 12
MODES = [pytest.param(False, id="disaggregated"), pytest.param(True, id="monolithic")]
PRESETS = ["tiny", "small"]


@pytest.fixture(scope="session")
def references(tiny_ckpt, small_ckpt):
    cache: dict = {}

    def expected(preset: str, case) -> list[int]:
        key = (preset, case.name)
        if key not in cache:
            ref = cache.setdefault(preset, Reference({"tiny": tiny_ckpt, "small": small_ckpt}[preset]))
            conversation, images = case.hf_conversation()
            cache[key] = ref.generate(conversation, images, MAX_TOKENS)
        return cache[key]

    expected.reference = lambda preset: cache[preset]
    return expected


def grpc_chat(stack, messages: list[dict], max_tokens: int = MAX_TOKENS,
              codec: int = common_pb2.CODEC_UNSPECIFIED) -> tuple[list[int], str, list]:
    """Send OpenAI-style messages through Gateway.Chat; returns (token ids, text, responses)."""
    turns = []
    for m in messages:
        parts = []
        for c in m["content"]:
            if c["type"] == "text":
                parts.append(gateway_pb2.ChatContentPart(text=c["text"]))
            else:
                parts.append(gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(url=c["image_url"]["url"])))
        turns.append(gateway_pb2.ChatTurn(role=m["role"], content=parts))
    request = gateway_pb2.ChatRequest(messages=turns, sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
                                      codec=codec)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        responses = list(gateway_pb2_grpc.GatewayStub(channel).Chat(request, timeout=120))
    ids = [t for r in responses for t in r.token_ids]
    return ids, "".join(r.text for r in responses), responses


def _stack(stacks, tiny_ckpt, small_ckpt, preset, monolithic):
    return stacks({"tiny": tiny_ckpt, "small": small_ckpt}[preset], monolithic=monolithic)


@pytest.mark.parametrize("monolithic", MODES)
@pytest.mark.parametrize("preset", PRESETS)
def test_tokens_equal_single_process_reference(stacks, tiny_ckpt, small_ckpt, references, preset, monolithic):
    stack = _stack(stacks, tiny_ckpt, small_ckpt, preset, monolithic)
    outputs = {}
    for case in CASES:
        ids, text, responses = grpc_chat(stack, case.openai_messages())
        expected = references(preset, case)
        assert ids == expected, f"{preset}/{case.name}: split {ids} != reference {expected}"
        assert text == references.reference(preset).decode(expected)
        assert responses[-1].finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
        outputs[case.name] = tuple(ids)
    # Equality must mean something: different images and prompts give different outputs.
    assert len(set(outputs.values())) == len(outputs), f"outputs collide: {outputs}"


@pytest.mark.parametrize("monolithic", MODES)
def test_openai_client_streams_an_image_answer(stacks, tiny_ckpt, small_ckpt, monolithic):
    stack = _stack(stacks, tiny_ckpt, small_ckpt, "tiny", monolithic)
    answer = ask_openai_about_an_image(stack.base_url)
    whole = answer.whole
    assert answer.streamed == whole.choices[0].message.content
    assert answer.streamed  # the random model does say something
    assert answer.finish_reasons == [whole.choices[0].finish_reason]
    assert answer.stream_usage.completion_tokens == whole.usage.completion_tokens
    assert answer.stream_usage.prompt_tokens == whole.usage.prompt_tokens > 256  # one tile of image placeholders
    # the streamed request prefilled the same prompt a moment before: the image's positions (and the
    # template's around them, in whole 16-slot blocks) come from the language replica's prefix cache
    assert whole.usage.prompt_tokens_details.cached_tokens >= 256


def test_grpc_reflection_lists_the_services(stacks, tiny_ckpt):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    stack = stacks(tiny_ckpt)
    targets = {"gateway": stack.grpc_target, "vision": stack.vision_targets[0], "language": stack.language_targets[0]}
    expected = {"gateway": "dvd.v1.Gateway", "vision": "dvd.v1.VisionEncoder", "language": "dvd.v1.LanguageDecoder"}
    for name, target in targets.items():
        with grpc.insecure_channel(target) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {expected[name], "grpc.health.v1.Health"} <= services, (name, services)


def test_models_and_health(stacks, tiny_ckpt):
    stack = stacks(tiny_ckpt)
    client = OpenAI(base_url=stack.base_url, api_key="unused")
    assert [m.id for m in client.models.list()] == ["internvl"]
    import httpx

    assert httpx.get(stack.base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    with grpc.insecure_channel(stack.grpc_target) as channel:
        reply = gateway_pb2_grpc.GatewayStub(channel).ListModels(gateway_pb2.ListModelsRequest())
    assert [m.id for m in reply.models] == ["internvl"]


@pytest.mark.parametrize("monolithic", MODES)
def test_chat_template_flag_reaches_the_language_process(stacks, tiny_ckpt, monolithic):
    """`--chat-template internvl2_5` on an HF-native checkpoint: the prompt is model.chat's
    (default system message included), through the launcher into either process kind."""
    from transformers import AutoTokenizer

    from tests.model_card import model_chat_query

    stack = stacks(tiny_ckpt, monolithic=monolithic, chat_template="internvl2_5")
    messages = [{"role": "user", "content": [{"type": "text", "text": "Tell me a story."}]}]
    ids, _, responses = grpc_chat(stack, messages, max_tokens=1)
    expected = AutoTokenizer.from_pretrained(tiny_ckpt)(model_chat_query("Tell me a story.", None, []))["input_ids"]
    assert responses[-1].usage.prompt_tokens == len(expected)
