"""Flash presets: the original InternVLChatModel layout on disk, loaded through the key map."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dvd.checkpoint import (
    CheckpointError,
    CheckpointLayout,
    checkpoint_layout,
    load_language_state,
    load_model_config,
    load_vision_state,
)
from dvd.checkpoint.keys import ORIGINAL_KEY_MAP, rename, to_original
from dvd.checkpoint.load import _weight_map
from language_service.model import build_language_model
from tools.checkpoint import make_checkpoint
from vision_service.modules import build_vision_modules


@pytest.fixture(scope="module")
def flash(tiny_flash_ckpt):
    return tiny_flash_ckpt


def _keys(ckpt) -> list[str]:
    return sorted(_weight_map(ckpt))


def test_writes_the_original_layout_with_flash_config(flash):
    config = json.loads((flash / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"] and config["model_type"] == "internvl_chat"
    assert config["flash_mode"] is True
    assert 0 <= config["flash_relative_threshold"] <= 1 and 0 <= config["flash_absolute_threshold"] <= 1
    assert config["llm_config"]["architectures"] == ["Qwen3ForCausalLM"]
    assert config["vision_config"]["qkv_bias"] is True and config["ps_version"] == "v2"
    assert config["template"] == "internvl2_5"  # as InternVL3.5's config.json names its conversation template
    keys = _keys(flash)
    for key in ("vision_model.embeddings.class_embedding", "vision_model.encoder.layers.1.attn.qkv.weight",
                "vision_model.encoder.layers.0.ls1", "mlp1.3.bias", "mlp2.7.weight", "gating.gate.1.bias",
                "pooling_before_gating.attn4.in_proj_weight", "pooling_before_gating.query_token",
                "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        assert key in keys, key
    assert not any(key.startswith(("vision_tower.", "multi_modal_projector.", "model.")) for key in keys)
    with safe_open(flash / "model.safetensors", framework="pt") as f:
        assert f.get_slice("vision_model.encoder.layers.0.attn.qkv.weight").get_shape() == [3 * 64, 64]


def test_every_original_key_round_trips():
    names = ["vision_tower.encoder.layer.3.attention.qkv.bias", "vision_tower.encoder.layer.0.lambda_2",
             "vision_tower.embeddings.patch_embeddings.projection.weight", "multi_modal_projector.linear_1.weight",
             "gating.block2.5.weight", "model.layers.1.self_attn.q_norm.weight", "lm_head.weight"]
    for name in names:
        key = to_original(name)
        assert rename(key)[1] == name, (name, key)
    assert len({source for source, _, _ in ORIGINAL_KEY_MAP}) == len(ORIGINAL_KEY_MAP)


def test_vision_tensors_equal_the_hf_layout_preset(flash, tiny_ckpt):
    """tiny and tiny-flash share seed, widths and tensor names, so the ViT and mlp1 loaded from
    the original layout (fused qkv cut back into q/k/v) must be tiny's tensors exactly."""
    hf, original = load_vision_state(tiny_ckpt), load_vision_state(flash)
    assert set(hf) < set(original)
    assert all(torch.equal(hf[key], original[key]) for key in hf)
    flash_keys = set(original) - set(hf)
    assert all(key.startswith(("mlp2.", "pooling_before_gating.", "gating.")) for key in flash_keys)


def test_config_translation(flash):
    config = load_model_config(flash)
    assert config.vision_config.hidden_size == 64 and config.vision_config.attention_bias
    assert list(config.vision_config.image_size) == [448, 448] and config.downsample_ratio == 0.5
    assert config.text_config.model_type == "qwen3" and config.image_seq_length == 256
    assert config.flash_mode and config.flash_relative_threshold == 0.1 and config.flash_absolute_threshold == 0.5
    tokenizer = json.loads((flash / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert config.image_token_id == ids["<IMG_CONTEXT>"]


def test_services_build_their_halves(flash):
    modules = build_vision_modules(flash, torch.float32, "cpu")
    assert modules.flash is not None and not modules.flash.training
    language = build_language_model(flash, torch.float32, "cpu")
    assert type(language).__name__ == "Qwen3ForCausalLM"
    assert all(key.startswith(("model.", "lm_head.")) for key in load_language_state(flash))


def test_sharded_flash_checkpoint_loads_the_same(flash, tmp_path):
    sharded = make_checkpoint("tiny-flash", tmp_path / "sharded", seed=0, max_shard_size="300KB")
    assert len(set(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    ours, theirs = load_vision_state(flash), load_vision_state(sharded)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_missing_router_tensor_is_an_error(flash, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(flash, broken)
    with safe_open(flash / "model.safetensors", framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k != "gating.block3.0.weight"}
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"ViR router / mlp2: missing tensors \[gating\.block3\.0\.weight\]"):
        build_vision_modules(broken, torch.float32, "cpu")


def test_transposing_pixel_shuffle_version_is_refused(flash, tmp_path):
    v1 = tmp_path / "v1"
    shutil.copytree(flash, v1)
    config = json.loads((v1 / "config.json").read_text())
    (v1 / "config.json").write_text(json.dumps({**config, "ps_version": "v1"}))
    with pytest.raises(CheckpointError, match="ps_version"):
        load_model_config(v1)


def test_the_layout_names_the_template(flash, tiny_ckpt, tmp_path):
    assert checkpoint_layout(flash) == CheckpointLayout(original=True, template="internvl2_5")
    assert checkpoint_layout(tiny_ckpt) == CheckpointLayout(original=False, template=None)
    raw = json.loads((flash / "config.json").read_text())
    del raw["template"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert checkpoint_layout(tmp_path) == CheckpointLayout(original=True, template=None)
