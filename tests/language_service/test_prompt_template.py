"""The prompt template follows the checkpoint: an original-layout one gets the `internvl2_5`
conversation template as the published `model.chat` renders it (checked against
`tests/model_card.py`, written from conversation.py's structure, not from our builder), an
HF-native one its jinja chat_template; `--chat-template` overrides both."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from dvd.types import ImagePart, Message, TextPart, VideoPart
from language_service.prompt import PromptBuilder
from tests.model_card import INTERNVL2_5_SYSTEM, model_chat_query

CONTEXT = "<IMG_CONTEXT>"


@pytest.fixture(scope="module")
def flash_tokenizer(tiny_flash_ckpt):
    return AutoTokenizer.from_pretrained(tiny_flash_ckpt)


@pytest.fixture(scope="module")
def original(flash_tokenizer, tiny_flash_ckpt):
    return PromptBuilder(flash_tokenizer, tiny_flash_ckpt)


def published_ids(tokenizer, question, history=None, num_patches_list=(), system_message=None) -> list[int]:
    """What model.chat tokenizes: `tokenizer(query)`, special tokens added as the tokenizer adds them."""
    query = model_chat_query(question, history, list(num_patches_list), system_message)
    return tokenizer(query)["input_ids"]


def test_the_original_layout_names_its_template(original):
    assert original.template.name == "internvl2_5"


def test_text_only_gets_the_default_system_message(original, flash_tokenizer):
    prompt = original.build([Message("user", (TextPart("Tell me a story."),))], [])
    assert prompt.token_ids == published_ids(flash_tokenizer, "Tell me a story.")
    assert INTERNVL2_5_SYSTEM in flash_tokenizer.decode(prompt.token_ids)


def test_one_image_with_tiles(original, flash_tokenizer):
    prompt = original.build([Message("user", (ImagePart(0), TextPart("What is in this image?")))], [7 * 256])
    # model.chat prepends "<image>\n" itself when the question has none
    assert prompt.token_ids == published_ids(flash_tokenizer, "What is in this image?", num_patches_list=[7])


def test_two_images_in_one_question(original, flash_tokenizer):
    messages = [Message("user", (TextPart("Image-1: "), ImagePart(0), TextPart("Image-2: "), ImagePart(1),
                                 TextPart("Describe the two images.")))]
    expected = published_ids(flash_tokenizer, "Image-1: <image>\nImage-2: <image>\nDescribe the two images.",
                             num_patches_list=[3, 5])
    assert original.build(messages, [3 * 256, 5 * 256]).token_ids == expected


def test_two_turns_follow_the_history(original, flash_tokenizer):
    messages = [Message("user", (ImagePart(0), TextPart("What do you see?"))),
                Message("assistant", (TextPart("I see colourful noise."),)),
                Message("user", (TextPart("Is there any pattern in it?"),))]
    history = [("<image>\nWhat do you see?", "I see colourful noise.")]
    expected = published_ids(flash_tokenizer, "Is there any pattern in it?", history, [1])
    assert original.build(messages, [256]).token_ids == expected


def test_video_frames_as_the_model_card_prefixes_them(original, flash_tokenizer):
    prompt = original.build([Message("user", (VideoPart((0, 1, 2, 3)), TextPart("What happens?")))], [256] * 4)
    prefix = "".join(f"Frame{i + 1}: <image>\n" for i in range(4))
    assert prompt.token_ids == published_ids(flash_tokenizer, prefix + "What happens?", num_patches_list=[1] * 4)


def test_a_client_system_message_replaces_the_default(original, flash_tokenizer):
    messages = [Message("system", (TextPart("Answer in one word."),)),
                Message("user", (ImagePart(0), TextPart("Colour?")))]
    prompt = original.build(messages, [256])
    assert prompt.token_ids == published_ids(flash_tokenizer, "Colour?", num_patches_list=[1],
                                             system_message="Answer in one word.")
    assert INTERNVL2_5_SYSTEM not in flash_tokenizer.decode(prompt.token_ids)


def test_compressed_tiles_keep_fewer_placeholders(original):
    prompt = original.build([Message("user", (ImagePart(0), TextPart("x")))], [256 + 64])
    assert prompt.token_ids.count(original.context_id) == 320


def test_hf_native_keeps_its_chat_template(tiny_ckpt):
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    builder = PromptBuilder(tokenizer, tiny_ckpt)
    text = tokenizer.decode(builder.build([Message("user", (TextPart("hi"),))], []).token_ids)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_named_template_overrides_an_hf_native_checkpoint(tiny_ckpt):
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    builder = PromptBuilder(tokenizer, tiny_ckpt, "internvl2_5")
    prompt = builder.build([Message("user", (ImagePart(0), TextPart("hi")))], [3 * 256])
    assert prompt.token_ids == published_ids(tokenizer, "hi", num_patches_list=[3])


def test_a_jinja_file_overrides_the_original_layout(tiny_flash_ckpt, flash_tokenizer, tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}]{% for c in m['content'] %}"
                    "{% if c['type'] == 'image' %}<IMG_CONTEXT>{% else %}{{ c['text'] }}{% endif %}"
                    "{% endfor %}|{% endfor %}[assistant]")
    builder = PromptBuilder(flash_tokenizer, tiny_flash_ckpt, str(path))
    prompt = builder.build([Message("user", (ImagePart(0), TextPart("hi")))], [2])
    assert flash_tokenizer.decode(prompt.token_ids) == "[user]<img><IMG_CONTEXT><IMG_CONTEXT></img>hi|[assistant]"


def test_an_original_checkpoint_without_template_uses_its_tokenizer_template(tiny_flash_ckpt, flash_tokenizer,
                                                                              tmp_path):
    ckpt = tmp_path / "no-template"
    ckpt.mkdir()
    raw = json.loads((tiny_flash_ckpt / "config.json").read_text())
    del raw["template"]
    (ckpt / "config.json").write_text(json.dumps(raw))
    shutil.copy(tiny_flash_ckpt / "chat_template.jinja", ckpt)
    builder = PromptBuilder(flash_tokenizer, ckpt)
    text = flash_tokenizer.decode(builder.build([Message("user", (TextPart("hi"),))], []).token_ids)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("template,choice,message", [
    ("internvl_zh", "checkpoint", "does not render"),  # a template name we do not know
    ("internvl2_5", "no-such-template", "neither"),
])
def test_unknown_templates_fail_at_load(tiny_flash_ckpt, flash_tokenizer, tmp_path, template, choice, message):
    raw = json.loads((tiny_flash_ckpt / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(raw | {"template": template}))
    with pytest.raises(ValueError, match=message):
        PromptBuilder(flash_tokenizer, tmp_path, choice)


def test_a_template_that_drops_images_fails_at_load(tiny_flash_ckpt, flash_tokenizer, tmp_path):
    path = tmp_path / "text_only.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}{% endfor %}")
    with pytest.raises(ValueError, match="image"):
        PromptBuilder(flash_tokenizer, tiny_flash_ckpt, str(path))


def test_the_flag_sets_the_config():
    from dvd.config import LanguageConfig
    from language_service.__main__ import parse_config
    from tools.cli import build_parser

    assert parse_config(["--model", "m"]).chat_template == "checkpoint"
    assert parse_config(["--model", "m", "--chat-template", "internvl2_5"]).chat_template == "internvl2_5"
    assert build_parser().parse_args(["serve", "--chat-template", "t.jinja"]).chat_template == "t.jinja"
    with pytest.raises(ValueError):
        LanguageConfig(model="m", chat_template="")
