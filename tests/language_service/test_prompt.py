"""Our prompt ids equal what transformers' InternVL processor builds for the same chat."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from dvd.checkpoint import load_processor
from dvd.errors import InvalidRequest
from dvd.types import ImagePart, Message, TextPart
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


@pytest.mark.parametrize(
    "messages",
    [
        [Message("robot", (TextPart("hi"),))],
        [Message("user", (TextPart("sneaky <IMG_CONTEXT>"),))],
        [Message("user", (ImagePart(2),))],
    ],
)
def test_rejects_bad_messages(builder, messages):
    with pytest.raises(InvalidRequest):
        builder.build(messages, [256])
