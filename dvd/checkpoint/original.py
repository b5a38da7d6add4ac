"""The original `InternVLChatModel` layout: OpenGVLab's remote-code checkpoints, and the only
layout the InternVL3.5-Flash (ViR) models ship in.

Its config.json nests an InternViT `vision_config` and an `llm_config` (no `text_config`), names
the architecture `InternVLChatModel` (model_type `internvl_chat`) and needs remote code to open
through AutoConfig. Nothing here runs remote code: `config_from_original` translates it into the
`InternVLConfig` the services already understand (field names as in transformers'
convert_internvl_weights_to_hf.py), and carries the Flash fields along as attributes.

The Flash fields are `flash_mode` (the published model takes its ViR path only when it is true) and
the auto-mode thresholds `flash_relative_threshold` / `flash_absolute_threshold`, read where the
published `InternVLChatModel.__init__` reads them. The released config.json values could not be
read here; the defaults below (a missing field, and what the flash presets write) are the values
the InternvlFlash port to transformers uses in its model tests (relative 0.1, absolute 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import InternVLConfig

from .errors import CheckpointError
from .keys import FLASH_PREFIXES, fuse_qkv, rename, to_original

ARCHITECTURE = "InternVLChatModel"
MODEL_TYPE = "internvl_chat"
DEFAULT_RELATIVE_THRESHOLD = 0.1
DEFAULT_ABSOLUTE_THRESHOLD = 0.5
DEFAULT_IMAGE_TOKEN_ID = 151667  # <IMG_CONTEXT> in InternVL's Qwen tokenizers
# Remote-code and bookkeeping keys that are no field of the transformers text config.
_LLM_DROP = ("_name_or_path", "auto_map", "use_bfloat16", "attn_implementation", "_attn_implementation",
             "_attn_implementation_autoset", "transformers_version", "torch_dtype")


def is_original(raw: dict[str, Any]) -> bool:
    """Whether a parsed config.json is the original InternVLChatModel layout."""
    return raw.get("model_type") == MODEL_TYPE or ARCHITECTURE in (raw.get("architectures") or [])


def config_from_original(raw: dict[str, Any], ckpt: Path) -> InternVLConfig:
    """The InternVLConfig equivalent of an original config.json; Flash fields kept as attributes."""
    if raw.get("ps_version", "v2") != "v2":
        # v1 leaves the pixel-shuffled grid transposed; only pre-InternVL2 checkpoints use it.
        raise CheckpointError(f"{ckpt}: ps_version {raw['ps_version']!r} is not supported (only 'v2')")
    vision, llm = raw["vision_config"], raw["llm_config"]
    image_size = int(raw.get("force_image_size") or vision["image_size"])
    patch_size = int(vision["patch_size"])
    ratio = float(raw.get("downsample_ratio", 0.5))
    vision_config = {
        "model_type": "internvl_vision",
        "hidden_size": vision["hidden_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": vision["intermediate_size"],
        "hidden_act": vision.get("hidden_act", "gelu"),
        "attention_bias": vision.get("qkv_bias", True),
        "use_qk_norm": vision.get("qk_normalization", False),
        "norm_type": vision.get("norm_type", "layer_norm"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "image_size": [image_size, image_size],
        "patch_size": [patch_size, patch_size],
        "num_channels": vision.get("num_channels", 3),
        "use_absolute_position_embeddings": True,
        "use_mask_token": False,
        "use_mean_pooling": True,  # InternViT has no final LayerNorm
    }
    text_config = {key: value for key, value in llm.items() if key not in _LLM_DROP}
    if "torch_dtype" in llm and "dtype" not in text_config:
        text_config["dtype"] = llm["torch_dtype"]
    config = InternVLConfig(
        architectures=["InternVLForConditionalGeneration"],
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=_image_token_id(ckpt),
        image_seq_length=int((image_size // patch_size) ** 2 * ratio**2),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=int(raw.get("select_layer", -1)),
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
    )
    config.flash_mode = bool(raw.get("flash_mode", False))
    config.flash_relative_threshold = float(raw.get("flash_relative_threshold", DEFAULT_RELATIVE_THRESHOLD))
    config.flash_absolute_threshold = float(raw.get("flash_absolute_threshold", DEFAULT_ABSOLUTE_THRESHOLD))
    return config


def original_config(hf: InternVLConfig, dtype: str, *, flash: bool) -> dict[str, Any]:
    """The config.json an InternVL3.5(-Flash) checkpoint carries, for the model `hf` describes."""
    vision = hf.vision_config
    llm = {key: value for key, value in hf.text_config.to_dict().items() if key not in _LLM_DROP}
    config = {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": vision.hidden_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "intermediate_size": vision.intermediate_size,
            "hidden_act": vision.hidden_act,
            "qkv_bias": vision.attention_bias,
            "qk_normalization": vision.use_qk_norm,
            "norm_type": vision.norm_type,
            "layer_norm_eps": vision.layer_norm_eps,
            "image_size": vision.image_size[0],
            "patch_size": vision.patch_size[0],
            "num_channels": vision.num_channels,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "drop_path_rate": 0.0,
            "initializer_factor": 0.1,
            "use_flash_attn": True,
        },
        "llm_config": llm,
        "downsample_ratio": hf.downsample_ratio,
        "select_layer": hf.vision_feature_layer,
        "force_image_size": vision.image_size[0],
        "template": "internvl2_5",
        "ps_version": "v2",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": bool(hf.text_config.tie_word_embeddings),
        "torch_dtype": dtype,
    }
    if flash:
        config.update(flash_mode=True, flash_relative_threshold=DEFAULT_RELATIVE_THRESHOLD,
                      flash_absolute_threshold=DEFAULT_ABSOLUTE_THRESHOLD)
    return config


def original_state(hf_state: dict[str, torch.Tensor], flash_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """InternVLForConditionalGeneration tensors (+ FlashHeads tensors) under original-layout keys."""
    service: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        renamed = rename(key)
        if renamed is None:
            raise CheckpointError(f"{key} is in no known InternVL layout")
        service[renamed[1]] = tensor
    for key, tensor in flash_state.items():
        if not key.startswith(FLASH_PREFIXES):
            raise CheckpointError(f"{key} is not a Flash head tensor")
        service[key] = tensor
    return {to_original(name): tensor.contiguous() for name, tensor in fuse_qkv(service).items()}


def _image_token_id(ckpt: Path) -> int:
    """The <IMG_CONTEXT> id from the checkpoint's tokenizer.json (the original config has none)."""
    path = ckpt / "tokenizer.json"
    if path.is_file():
        for token in json.loads(path.read_text()).get("added_tokens", []):
            if token.get("content") == "<IMG_CONTEXT>":
                return int(token["id"])
    return DEFAULT_IMAGE_TOKEN_ID
