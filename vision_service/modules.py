"""The vision half of a checkpoint: InternViT, the MLP projector(s) and the ViR router, built from
either checkpoint layout while reading only vision tensors."""

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import InternVLConfig, InternVLVisionModel
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from dvd.checkpoint import load_model_config, load_vision_state
from dvd.checkpoint.assign import assign_state, parameters_on_meta, strip_prefix
from dvd.checkpoint.keys import FLASH_PREFIXES

from .vir import FlashHeads

VISION_PREFIX = "vision_tower."
PROJECTOR_PREFIX = "multi_modal_projector."


@dataclass
class VisionModules:
    """The vision half of a checkpoint, in eval mode. The config is included because the vision
    path also needs its downsample_ratio, vision_feature_layer / select strategy and, for Flash
    checkpoints, `flash_mode` and the router thresholds."""

    vision_tower: InternVLVisionModel
    projector: InternVLMultiModalProjector  # mlp1: 256 tokens per tile
    config: InternVLConfig
    flash: FlashHeads | None  # ViR router + mlp2 (64 tokens per tile); None without them


def build_vision_modules(
    ckpt: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> VisionModules:
    """InternViT, MLP projector(s) and router with the checkpoint's weights. No LLM tensor is read;
    every vision tensor must land in a module (a stray one is an error, as a missing one is)."""
    config = copy.deepcopy(load_model_config(ckpt))
    state = load_vision_state(ckpt, device)
    has_flash = any(key.startswith(FLASH_PREFIXES) for key in state)
    with parameters_on_meta():
        vision_tower = InternVLVisionModel._from_config(config.vision_config, attn_implementation=attn_implementation)
        projector = InternVLMultiModalProjector(config)
        flash = None
        if has_flash:
            flash = FlashHeads(config.vision_config.hidden_size, config.text_config.hidden_size,
                               config.downsample_ratio)
    assign_state(vision_tower, strip_prefix(state, VISION_PREFIX), dtype, device, f"{ckpt} vision tower")
    assign_state(projector, strip_prefix(state, PROJECTOR_PREFIX), dtype, device, f"{ckpt} projector")
    if flash is not None:
        flash_state = {key: tensor for key, tensor in state.items() if key.startswith(FLASH_PREFIXES)}
        assign_state(flash, flash_state, dtype, device, f"{ckpt} ViR router / mlp2")
        flash.eval()
    return VisionModules(vision_tower.eval(), projector.eval(), config, flash)
