"""make_checkpoint writes the real HF on-disk format: transformers' Auto classes open it as they
open OpenGVLab/InternVL3-1B-hf, and the same preset and seed give the same bytes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    InternVLConfig,
    InternVLForConditionalGeneration,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.utils import is_torchvision_available

from dvd.checkpoint import CheckpointError, load_processor
from tools.checkpoint import make_checkpoint, preset_names
from tools.checkpoint.tokenizer import MULTIMODAL_TOKENS, QWEN2_PRETOKENIZE_REGEX, SPECIAL_TOKENS

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


def test_writes_the_hf_file_set(tiny):
    names = {path.name for path in tiny.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "processor_config.json",
    } <= names
    assert all(oct(path.stat().st_mode)[-3:] == "644" for path in tiny.iterdir())


def test_config_mirrors_internvl3_hf(tiny):
    config = AutoConfig.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert isinstance(config, InternVLConfig)
    assert config.architectures == ["InternVLForConditionalGeneration"]
    assert config.text_config.model_type == "qwen2"
    assert config.vision_config.model_type == "internvl_vision"
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert (config.image_seq_length, config.downsample_ratio) == (256, 0.5)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-1, "default")
    assert config.projector_hidden_act == "gelu"
    vision = config.vision_config
    assert (tuple(vision.image_size), tuple(vision.patch_size)) == ((448, 448), (14, 14))
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (64, 2, 4)
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers) == (64, 2)
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    assert text.vocab_size >= len(tokenizer) and text.max_position_embeddings == 32768
    raw = json.loads((tiny / "config.json").read_text())
    assert raw["dtype"] == "float32"
    generation = json.loads((tiny / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generation["pad_token_id"] == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_image_processor_settings(tiny):
    raw = json.loads((tiny / "preprocessor_config.json").read_text())
    assert raw["crop_to_patches"] is True and (raw["min_patches"], raw["max_patches"]) == (1, 12)
    assert raw["size"] == {"height": 448, "width": 448} and raw["resample"] == 3
    assert raw["image_mean"] == [0.485, 0.456, 0.406] and raw["image_std"] == [0.229, 0.224, 0.225]
    try:
        processor = AutoImageProcessor.from_pretrained(tiny)
    except ImportError as exc:  # transformers 5.17: AutoImageProcessor needs torchvision even for PIL
        assert not is_torchvision_available() and "Torchvision" in str(exc)
        processor = load_processor(tiny).image_processor
    if not is_torchvision_available():
        assert type(processor).__name__ == "GotOcr2ImageProcessorPil"
    pixel_values = processor(images=[Image.new("RGB", (896, 448), "red")], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (3, 3, 448, 448)  # two tiles + the thumbnail


def test_model_opens_with_from_pretrained(tiny):
    model = InternVLForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32)
    assert model.lm_head.weight.shape[0] == model.config.text_config.vocab_size


def test_tokenizer_is_qwen2_with_internvl_special_tokens(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert isinstance(tokenizer, Qwen2Tokenizer)
    assert QWEN2_PRETOKENIZE_REGEX == PRETOKENIZE_REGEX
    ids = [tokenizer.convert_tokens_to_ids(token) for token, _ in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # Qwen2.5-VL/InternVL order
    for token, _ in SPECIAL_TOKENS:
        assert tokenizer(token, add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(token)]
    for attribute, token in MULTIMODAL_TOKENS.items():
        assert getattr(tokenizer, attribute) == token
    assert tokenizer.context_image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)


def test_tokenizer_round_trips_any_text(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    text = "Describe this picture: naïve café, 日本語, emoji 😀, tabs\tand\nnewlines, 12345."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    sentence = "the red car stopped at the green light"
    assert len(tokenizer(sentence).input_ids) < len(sentence) / 3  # merges learned: mostly words, not bytes


def test_chat_template_renders_image_placeholder(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\n<IMG_CONTEXT>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n"


def test_processor_expands_each_image_into_tiles_of_256_tokens(tiny):
    processor = load_processor(tiny)
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (896, 448), "blue")], text=[prompt], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    num_tiles = inputs["pixel_values"].shape[0]
    assert num_tiles == 3
    start = ids.index(tokenizer.convert_tokens_to_ids("<img>"))
    end = ids.index(tokenizer.convert_tokens_to_ids("</img>"))
    assert ids[start + 1 : end] == [tokenizer.context_image_token_id] * (256 * num_tiles)


@pytest.mark.skipif(not is_torchvision_available(), reason="transformers 5.23's AutoProcessor needs torchvision")
def test_auto_processor_opens_it(tiny):
    assert type(AutoProcessor.from_pretrained(tiny)).__name__ == "InternVLProcessor"


def test_same_seed_same_bytes_and_other_seed_other_weights(tmp_path, tiny):
    again = make_checkpoint("tiny", tmp_path / "again", seed=0)
    other = make_checkpoint("tiny", tmp_path / "other", seed=1)
    for path in tiny.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    assert (other / "model.safetensors").read_bytes() != (tiny / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()


def test_tokenizer_training_is_deterministic_across_processes(tiny):
    # A fresh interpreter with a different hash seed: catches set/dict-order dependence.
    script = (
        "import sys; from tools.checkpoint.tokenizer import build_tokenizer; "
        "build_tokenizer(1024).save_pretrained(sys.argv[1])"
    )
    out_dir = tiny.parent / "tokenizer-subprocess"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", script, str(out_dir)], check=True, env=env, timeout=120)
    assert (out_dir / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()


def test_refuses_unknown_preset_and_non_empty_directory(tmp_path):
    assert preset_names() == ["1b-shape", "small", "small-flash", "tiny", "tiny-flash"]
    with pytest.raises(CheckpointError, match="unknown preset"):
        make_checkpoint("huge", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        make_checkpoint("tiny", tmp_path / "full")
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
