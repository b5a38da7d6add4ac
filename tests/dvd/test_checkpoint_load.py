"""Each service reads only its own tensors, from either HF key layout, and the split halves
reproduce the monolithic InternVLForConditionalGeneration exactly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration
from transformers.models.internvl.modeling_internvl import InternVLModel

from dvd.checkpoint import (
    CheckpointError,
    load_language_state,
    load_processor,
    load_vision_state,
    read_tensors,
    resolve_checkpoint,
)
from language_service.model import build_language_model
from tools.checkpoint import make_checkpoint
from vision_service.modules import build_vision_modules

REPO_ROOT = Path(__file__).resolve().parents[2]
# legacy names (what save_pretrained writes, 5.23 included) -> transformers' in-memory names
IN_MEMORY_RENAMES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="module")
def inputs(tiny):
    processor = load_processor(tiny)
    image = Image.fromarray((np.random.default_rng(0).random((300, 700, 3)) * 255).astype("uint8"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is here?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(images=[image], text=[prompt], return_tensors="pt")


def _copy_with_keys(src: Path, dst: Path, rename, drop=(), num_shards: int = 1) -> Path:
    """A copy of checkpoint `src` with renamed / dropped keys, optionally split into indexed shards."""
    shutil.copytree(src, dst)
    with safe_open(src / "model.safetensors", framework="pt") as f:
        keys = f.keys()
        tensors = {rename(key): f.get_tensor(key) for key in keys if key not in drop}
    if num_shards == 1:
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
        return dst
    (dst / "model.safetensors").unlink()
    keys, weight_map = sorted(tensors), {}
    for shard in range(num_shards):
        name = f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {key: tensors[key] for key in keys[shard::num_shards]}
        save_file(part, dst / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def _to_in_memory_layout(key: str) -> str:
    for old, new in IN_MEMORY_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise AssertionError(key)


def _encode_images(vision_tower, projector, config, pixel_values):
    """What InternVLModel.get_image_features does, from the standalone vision modules."""
    hidden = vision_tower(pixel_values=pixel_values).last_hidden_state[:, 1:, :]  # [T, 1024, C], no CLS
    tiles, patches, channels = hidden.shape
    side = int(patches**0.5)
    hidden = InternVLModel.pixel_shuffle(None, hidden.reshape(tiles, side, side, channels), config.downsample_ratio)
    return projector(hidden.reshape(tiles, -1, hidden.shape[-1]))  # [T, 256, H]


def test_states_are_disjoint_and_named_for_the_services(tiny):
    vision, language = load_vision_state(tiny), load_language_state(tiny)
    assert all(key.startswith(("vision_tower.", "multi_modal_projector.")) for key in vision)
    assert all(key.startswith(("model.", "lm_head.")) for key in language)
    assert "model.embed_tokens.weight" in language and "lm_head.weight" in language
    with safe_open(tiny / "model.safetensors", framework="pt") as f:
        assert len(vision) + len(language) == len(list(f.keys()))


def test_read_tensors_reads_only_selected_keys(tiny):
    state = read_tensors(tiny, lambda key: "norm" if key == "language_model.model.norm.weight" else None)
    assert list(state) == ["norm"] and state["norm"].shape == (64,)


def test_split_halves_reproduce_the_full_model(tiny, inputs):
    full = InternVLForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    modules = build_vision_modules(tiny, torch.float32, "cpu")
    vision_tower, projector, config = modules.vision_tower, modules.projector, modules.config
    language_model = build_language_model(tiny, torch.float32, "cpu", attn_implementation="sdpa")
    assert type(language_model).__name__ == "Qwen2ForCausalLM"
    with torch.inference_mode():
        expected = full.get_image_features(inputs["pixel_values"]).pooler_output
        features = _encode_images(vision_tower, projector, config, inputs["pixel_values"])
        assert torch.equal(features, expected)
        input_ids = inputs["input_ids"]
        embeds = language_model.get_input_embeddings()(input_ids)
        placeholders = (input_ids == config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(placeholders, features.reshape(-1, features.shape[-1]))
        logits = language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        torch.testing.assert_close(logits, full(**inputs).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("layout", "num_shards"), [("in-memory", 1), ("in-memory", 3), ("legacy", 3)])
def test_both_key_layouts_load_identically(tiny, tmp_path, layout, num_shards):
    rename = _to_in_memory_layout if layout == "in-memory" else (lambda key: key)
    other = _copy_with_keys(tiny, tmp_path / layout, rename, num_shards=num_shards)
    for load in (load_vision_state, load_language_state):
        ours, theirs = load(tiny), load(other)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    # transformers itself reads the copy as the same model, so the layout is a genuine one.
    reference = InternVLForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32)
    theirs = InternVLForConditionalGeneration.from_pretrained(other, dtype=torch.float32)
    pairs = zip(reference.state_dict().values(), theirs.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    vision_tower = build_vision_modules(other, torch.float32, "cpu").vision_tower
    assert torch.equal(vision_tower.embeddings.cls_token, reference.model.vision_tower.embeddings.cls_token)


def test_sharded_preset_writes_an_index(tmp_path):
    ckpt = make_checkpoint("tiny", tmp_path / "sharded", seed=0, max_shard_size="100KB")
    weight_map = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 1
    assert load_language_state(ckpt)["model.norm.weight"].shape == (64,)
    InternVLForConditionalGeneration.from_pretrained(ckpt)


def test_tied_checkpoint_shares_the_embedding(tiny, tmp_path):
    tied = _copy_with_keys(tiny, tmp_path / "tied", lambda key: key, drop={"language_model.lm_head.weight"})
    config = json.loads((tied / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
    (tied / "config.json").write_text(json.dumps(config))
    state = load_language_state(tied)
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]
    model = build_language_model(tied, torch.float32, "cpu")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_missing_lm_head_without_tying_is_an_error(tiny, tmp_path):
    broken = _copy_with_keys(tiny, tmp_path / "no-head", lambda key: key, drop={"language_model.lm_head.weight"})
    with pytest.raises(CheckpointError, match="no lm_head"):
        load_language_state(broken)


def test_strict_loading_names_missing_and_unexpected_tensors(tiny, tmp_path):
    missing = _copy_with_keys(
        tiny, tmp_path / "missing", lambda key: key, drop={"vision_tower.encoder.layer.1.mlp.fc2.weight"}
    )
    with pytest.raises(CheckpointError, match=r"missing tensors \[encoder\.layer\.1\.mlp\.fc2\.weight\]"):
        build_vision_modules(missing, torch.float32, "cpu")
    extra = _copy_with_keys(
        tiny, tmp_path / "extra", lambda key: key.replace("layers.1.", "layers.7.") if "model.layers.1." in key else key
    )
    with pytest.raises(CheckpointError, match=r"unexpected tensors \[model\.layers\.7\."):
        build_language_model(extra, torch.float32, "cpu")


def test_keys_of_another_format_are_refused(tiny, tmp_path):
    chat_layout = _copy_with_keys(tiny, tmp_path / "chat", lambda key: key.replace("multi_modal_projector.", "mlp1."))
    with pytest.raises(CheckpointError, match=r"no known InternVL key layout \(mlp1\."):
        load_vision_state(chat_layout)


def test_bf16_loading_casts_once(tiny):
    language_model = build_language_model(tiny, torch.bfloat16, "cpu")
    assert {p.dtype for p in language_model.parameters()} == {torch.bfloat16}
    assert language_model.model.rotary_emb.inv_freq.dtype == torch.float32  # computed, not loaded
    assert not any(p.requires_grad for p in language_model.parameters())


def test_resolve_checkpoint_local_and_missing(tiny, tmp_path):
    assert resolve_checkpoint(str(tiny)) == tiny.resolve()
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(str(tiny / "config.json"))
    with pytest.raises(CheckpointError, match="safetensors"):
        read_tensors(tmp_path, lambda key: key)


def test_resolve_hub_id_offline_fails_fast_and_clearly(tmp_path):
    # huggingface_hub reads HF_HUB_OFFLINE at import, hence a fresh interpreter.
    script = (
        "from dvd.checkpoint import CheckpointError, resolve_checkpoint\n"
        "try:\n    resolve_checkpoint('OpenGVLab/InternVL3-1B-hf')\n"
        "except CheckpointError as exc:\n    print('CheckpointError', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.startswith("CheckpointError checkpoint 'OpenGVLab/InternVL3-1B-hf' is not a local directory")
    assert "HF_HUB_OFFLINE" in result.stdout
