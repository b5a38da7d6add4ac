"""Our prompt ids equal what transformers' InternVL processor builds for the same chat."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from dvd.checkpoint import load_processor
from dvd.errors import InvalidRequest
from dvd.types import ImagePart, Message, TextPart, VideoPart
from language_service.prompt import PromptBuilder
from tests.conftest import png_bytes


@pytest.fixture(scope="module")
def builder(tiny_ckpt):
    return PromptBuilder(AutoTokenizer.from_pretrained(tiny_ckpt), tiny_ckpt)


@pytest.fixture(scope="module")
def processor(tiny_ckpt):
    return load_processor(tiny_ckpt)


def test_matches_processor_with_images(builder, processor):
    import io

    from PIL import Image

    images = [png_bytes(448, 448), png_bytes(896, 448, seed=3)]  # 1 tile, 3 tiles
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                                     {"type": "text", "text": " compare them"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
        {"role": "user", "content": [{"type": "text", "text": "How?"}]},
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    expected = processor(text=[text], images=[Image.open(io.BytesIO(b)) for b in images], return_tensors="pt")
    messages = [
        Message("system", (TextPart("Be brief."),)),
        Message("user", (ImagePart(0), TextPart("and"), ImagePart(1), TextPart(" compare them"))),
        Message("assistant", (TextPart("They differ."),)),
        Message("user", (TextPart("How?"),)),
    ]
    prompt = builder.build(messages, [256, 3 * 256])
    assert prompt.token_ids == expected["input_ids"][0].tolist()
    assert prompt.num_image_tokens == 4 * 256 and prompt.image_order == [0, 1]


def test_compressed_tiles_keep_fewer_placeholders(builder):
    prompt = builder.build([Message("user", (ImagePart(0), TextPart("x")))], [256 + 64])
    assert prompt.token_ids.count(builder.context_id) == 320


def test_video_frames_render_as_the_processor_renders_a_video(builder, processor):
    """transformers' InternVLProcessor expands `<video>` into "Frame{i}: <img>...</img>" lines
    (`replace_video_token`), one 256-token tile per frame; ours must be the same ids."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    frames = "\n".join(f"Frame{i + 1}: <img>{'<IMG_CONTEXT>' * 256}</img>" for i in range(3))
    expected = processor.tokenizer(text.replace("<video>", frames), add_special_tokens=False)["input_ids"]
    prompt = builder.build([Message("user", (VideoPart((0, 1, 2)), TextPart("What happens?")))], [256] * 3)
    assert prompt.token_ids == expected
    assert prompt.image_order == [0, 1, 2] and prompt.num_image_tokens == 3 * 256


def test_video_and_images_number_in_order(builder):
    messages = [Message("user", (ImagePart(0), VideoPart((1, 2)), TextPart("x"), ImagePart(3)))]
    prompt = builder.build(messages, [256, 64, 256, 64])
    assert prompt.image_order == [0, 1, 2, 3]
    assert prompt.token_ids.count(builder.context_id) == 640


@pytest.mark.parametrize(
    "messages",
    [
        [Message("robot", (TextPart("hi"),))],
        [Message("user", (TextPart("sneaky <IMG_CONTEXT>"),))],
        [Message("user", (ImagePart(2),))],
        [Message("user", (VideoPart((0, 5)),))],
    ],
)
def test_rejects_bad_messages(builder, messages):
    with pytest.raises(InvalidRequest):
        builder.build(messages, [256])
