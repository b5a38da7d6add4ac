"""InternVL3.5-Flash end to end: the split system (gateway + two vision replicas + language, real
processes on loopback) on the flash presets, token for token against the test-side whole-model
reference (`tests/flash_reference.py`) with vir=auto, off and max; multi-image requests (routed
first, every tile ranked against the whole request); 8-frame videos over REST and gRPC."""

from __future__ import annotations

import base64
import io

import av
import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.conftest import shapes_png, video_bytes
from tests.flash_reference import FlashReference
from tests.gateway.test_video import model_card_indices
from tests.integration.cases import NOISE_SQUARE, NOISE_WIDE, Case

MAX_TOKENS = 10
# Solid-colour tiles score (almost) alike, and ties in the router's ranking are decided by float
# noise, in the published model too; these images give every tile a distinct score.
SHAPES_A, SHAPES_B = shapes_png(3), shapes_png(4)
CASES = [
    Case("text_only", (("user", ("Tell me a short story about a lighthouse.",)),)),
    Case("one_tile", (("user", (NOISE_SQUARE, "What is in this image?")),)),  # never compressed in auto
    Case("three_tiles", (("user", (NOISE_WIDE, "Describe the picture in detail.")),)),
    Case("five_tiles", (("user", (SHAPES_A, "What shapes do you see?")),)),
    Case("two_images", (("user", (NOISE_WIDE, SHAPES_B, "How do these two images differ?")),)),
]
VIR = {"auto": common_pb2.VIR_MODE_AUTO, "off": common_pb2.VIR_MODE_OFF, "max": common_pb2.VIR_MODE_MAX}
VIDEO = video_bytes(16)
VIDEO_QUESTION = "What happens in the video?"


@pytest.fixture(scope="session")
def flash_ckpts(tiny_flash_ckpt, small_flash_ckpt):
    return {"tiny-flash": tiny_flash_ckpt, "small-flash": small_flash_ckpt}


@pytest.fixture(scope="session")
def flash_refs(flash_ckpts):
    cache: dict[str, FlashReference] = {}

    def get(preset: str) -> FlashReference:
        if preset not in cache:
            cache[preset] = FlashReference(flash_ckpts[preset])
        return cache[preset]

    return get


def grpc_chat(stack, turns, vir: str | None = None, **request) -> tuple[list[int], gateway_pb2.ChatResponse]:
    """One Gateway.Chat call; returns (the reply's token ids, the final response)."""
    messages = []
    for role, parts in turns:
        content = []
        for p in parts:
            if isinstance(p, str):
                content.append(gateway_pb2.ChatContentPart(text=p))
            elif isinstance(p, gateway_pb2.VideoInput):
                content.append(gateway_pb2.ChatContentPart(video=p))
            else:
                content.append(gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=p)))
        messages.append(gateway_pb2.ChatTurn(role=role, content=content))
    pb = gateway_pb2.ChatRequest(messages=messages, sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS),
                                 vir=VIR[vir] if vir else 0, **request)
    with grpc.insecure_channel(stack.grpc_target) as channel:
        responses = list(gateway_pb2_grpc.GatewayStub(channel).Chat(pb, timeout=300))
    return [t for r in responses for t in r.token_ids], responses[-1]


def image_tokens(compressed: list[bool]) -> int:
    return sum(64 if c else 256 for c in compressed)


@pytest.mark.parametrize("vir", ["auto", "off", "max"])
@pytest.mark.parametrize("preset", ["tiny-flash", "small-flash"])
def test_tokens_equal_the_flash_reference(stacks, flash_ckpts, flash_refs, preset, vir):
    stack = stacks(flash_ckpts[preset], vision_replicas=2)
    reference = flash_refs(preset)
    outputs, mixed = {}, False
    for case in CASES:
        conversation, images = case.hf_conversation()
        expected = reference.generate(conversation, images, MAX_TOKENS, vir)
        if vir == "auto":
            assert expected.margin > 1e-4, f"{case.name}: a tile's score is within float noise of a threshold"
            mixed |= 0 < sum(expected.compressed) < len(expected.compressed)
        ids, final = grpc_chat(stack, case.turns, vir)
        assert ids == expected.token_ids, f"{preset}/{vir}/{case.name}"
        assert final.usage.image_tokens == image_tokens(expected.compressed), f"{preset}/{vir}/{case.name}"
        outputs[case.name] = tuple(expected.token_ids)
    assert len(set(outputs.values())) == len(outputs), f"outputs collide: {outputs}"
    assert vir != "auto" or mixed  # the router really chose: some tiles compressed, some not


def test_a_request_ranks_tiles_across_images(flash_refs):
    """The decisions for an image depend on the request's other images, which is why multi-image
    auto requests are routed before they are encoded (the split test above checks the tokens)."""
    reference = flash_refs("small-flash")
    alone = reference.generate([{"role": "user", "content": [{"type": "image"}]}], [NOISE_WIDE], 1, "auto")
    together = reference.generate([{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}],
                                  [NOISE_WIDE, SHAPES_B], 1, "auto")
    assert together.compressed[: len(alone.compressed)] != alone.compressed


def test_threshold_overrides_reach_the_router(stacks, flash_ckpts, flash_refs):
    stack = stacks(flash_ckpts["tiny-flash"], vision_replicas=2)
    case = CASES[3]
    conversation, images = case.hf_conversation()
    expected = flash_refs("tiny-flash").generate(conversation, images, MAX_TOKENS, "auto", relative=0.6)
    default = flash_refs("tiny-flash").generate(conversation, images, MAX_TOKENS, "auto")
    assert sum(expected.compressed) < sum(default.compressed)
    body = {"model": "internvl", "max_tokens": MAX_TOKENS, "temperature": 0, "vir": "auto",
            "vir_thresholds": {"relative": 0.6}, "messages": case.openai_messages()}
    reply = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=300).json()
    assert reply["choices"][0]["message"]["content"] == flash_refs("tiny-flash").decode(expected.token_ids)
    ids, final = grpc_chat(stack, case.turns, "auto", vir_thresholds=common_pb2.VirThresholds(relative=0.6))
    assert ids == expected.token_ids
    assert final.usage.image_tokens == image_tokens(expected.compressed)


def _reference_frames(num_frames: int) -> list[bytes]:
    """The video's frames at the model cards' indices, decoded here independently of the gateway."""
    with av.open(io.BytesIO(VIDEO)) as container:
        decoded = [frame.to_image() for frame in container.decode(video=0)]
    out = []
    for index in model_card_indices(len(decoded), num_frames):
        buf = io.BytesIO()
        decoded[index].save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("vir", ["auto", "off"])
def test_eight_frame_video_over_rest_and_grpc(stacks, flash_ckpts, flash_refs, vir):
    stack = stacks(flash_ckpts["tiny-flash"], vision_replicas=2)
    reference = flash_refs("tiny-flash")
    frames = _reference_frames(8)
    content = [part for i in range(8) for part in ({"type": "text", "text": f"Frame{i + 1}: "}, {"type": "image"})]
    conversation = [{"role": "user", "content": content + [{"type": "text", "text": VIDEO_QUESTION}]}]
    expected = reference.generate(conversation, frames, MAX_TOKENS, vir, frames=True)
    assert len(expected.compressed) == 8 and (vir == "off" or 0 < sum(expected.compressed) < 8)
    assert vir == "off" or expected.margin > 1e-4

    video_url = {"url": "data:video/mp4;base64," + base64.b64encode(VIDEO).decode()}
    body = {"model": "internvl", "max_tokens": MAX_TOKENS, "temperature": 0, "vir": vir, "messages": [
        {"role": "user", "content": [{"type": "video_url", "video_url": video_url, "num_frames": 8},
                                     {"type": "text", "text": VIDEO_QUESTION}]}]}
    reply = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=300).json()
    assert reply["choices"][0]["message"]["content"] == reference.decode(expected.token_ids)

    ids, final = grpc_chat(stack, [("user", (gateway_pb2.VideoInput(data=VIDEO, num_frames=8), VIDEO_QUESTION))], vir)
    assert ids == expected.token_ids
    assert final.usage.image_tokens == image_tokens(expected.compressed)
    assert reply["usage"]["prompt_tokens"] == final.usage.prompt_tokens


def hidden_colour_png(width: int = 750, height: int = 300) -> bytes:
    """RGBA noise, half its pixels fully transparent over a stored (non-white) colour."""
    rng = np.random.default_rng(11)
    alpha = np.where(rng.random((height, width)) < 0.5, 0, 255).astype(np.uint8)
    pixels = np.dstack([rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), alpha])
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_model_card_tiling_and_alpha_end_to_end(stacks, flash_ckpts, flash_refs):
    """At min = max = 4 tiles a 750x300 image is 4x1 for the model cards (2x2 for HF), and its
    transparent pixels keep their colour (HF paints them white): the tokens are the cards'. (On
    tiny-flash each of the two differences alone changes the reference's 10 tokens.)"""
    stack = stacks(flash_ckpts["tiny-flash"], vision_replicas=2)
    reference = flash_refs("tiny-flash")
    image = hidden_colour_png()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    expected = reference.generate(conversation, [image], MAX_TOKENS, "off", min_tiles=4, max_tiles=4)
    ids, final = grpc_chat(stack, [("user", (image, "What is this?"))], "off",
                           tiling=common_pb2.TilingOptions(min_tiles=4, max_tiles=4))
    assert ids == expected.token_ids
    assert final.usage.image_tokens == 5 * 256  # 4 tiles + the thumbnail


def test_monolithic_flash_matches_too(stacks, flash_ckpts, flash_refs):
    stack = stacks(flash_ckpts["tiny-flash"], monolithic=True)
    case = CASES[4]
    conversation, images = case.hf_conversation()
    expected = flash_refs("tiny-flash").generate(conversation, images, MAX_TOKENS, "auto")
    ids, final = grpc_chat(stack, case.turns)  # no vir: the checkpoint's flash_mode makes auto the default
    assert ids == expected.token_ids
    assert final.usage.image_tokens == image_tokens(expected.compressed)


def test_max_needs_a_flash_checkpoint(stacks, tiny_ckpt):
    stack = stacks(tiny_ckpt)
    body = {"model": "internvl", "max_tokens": 2, "vir": "max",
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(NOISE_SQUARE).decode()}},
                {"type": "text", "text": "hi"}]}]}
    reply = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=120)
    assert reply.status_code == 400 and "Flash" in reply.json()["error"]["message"]


def test_frames_decode_the_same_as_the_gateway(tmp_path):
    from gateway.video import sample_frames

    ours = [np.asarray(Image.open(io.BytesIO(b))) for b in sample_frames(VIDEO, 8, 10**6)]
    theirs = [np.asarray(Image.open(io.BytesIO(b))) for b in _reference_frames(8)]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
