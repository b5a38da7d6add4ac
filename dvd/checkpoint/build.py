"""Build each service's modules from a checkpoint, holding only that service's weights.

Parameters are created on the meta device (no memory, no random init) and the tensors read from
the shards are assigned in place (`load_state_dict(assign=True)`), so peak memory is one copy of
the service's own weights. Buffers, which are computed rather than stored (RoPE inv_freq), are
created for real at construction. Loading is strict: a missing or unexpected tensor raises
CheckpointError listing them, instead of leaving a silently random layer.
"""

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, InternVLConfig, InternVLVisionModel, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from vision_service.vir import FlashHeads

from .errors import CheckpointError
from .keys import FLASH_PREFIXES
from .load import load_language_state, load_model_config, load_vision_state

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
    with _parameters_on_meta():
        vision_tower = InternVLVisionModel._from_config(config.vision_config, attn_implementation=attn_implementation)
        projector = InternVLMultiModalProjector(config)
        flash = None
        if has_flash:
            flash = FlashHeads(config.vision_config.hidden_size, config.text_config.hidden_size,
                               config.downsample_ratio)
    _assign(vision_tower, _strip_prefix(state, VISION_PREFIX), dtype, device, f"{ckpt} vision tower")
    _assign(projector, _strip_prefix(state, PROJECTOR_PREFIX), dtype, device, f"{ckpt} projector")
    if flash is not None:
        flash_state = {key: tensor for key, tensor in state.items() if key.startswith(FLASH_PREFIXES)}
        _assign(flash, flash_state, dtype, device, f"{ckpt} ViR router / mlp2")
        flash.eval()
    return VisionModules(vision_tower.eval(), projector.eval(), config, flash)


def build_language_model(
    ckpt: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """The text config's causal LM (Qwen2ForCausalLM for InternVL3) with the checkpoint's weights.

    No ViT or projector tensor is read. Feed it `inputs_embeds` with the image features scattered
    into the <IMG_CONTEXT> positions, as InternVLModel.forward does.
    """
    text_config = copy.deepcopy(load_model_config(ckpt).text_config)
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(text_config, attn_implementation=attn_implementation)
    _assign(model, load_language_state(ckpt, device), dtype, device, f"{ckpt} language model")
    return model.eval()


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device and skip their init; buffers stay real.

    Unlike `with torch.device("meta")`, this keeps non-persistent buffers such as RoPE's inv_freq,
    which no checkpoint stores and which would otherwise be lost.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        with no_init_weights():
            yield
    finally:
        nn.Module.register_parameter = register


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: tensor for key, tensor in state.items() if key.startswith(prefix)}


def _assign(
    module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, device: str | torch.device, what: str
) -> None:
    """Strictly load `state` into `module` by assignment, cast to `dtype` on `device`."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing tensors {_sample(missing)}, unexpected tensors {_sample(unexpected)}")
    # Cast through a memo so tensors shared by tying (lm_head = embed_tokens) stay one tensor.
    cast: dict[int, torch.Tensor] = {}
    for tensor in state.values():
        if id(tensor) not in cast:
            target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
            cast[id(tensor)] = tensor.to(device=device, dtype=target_dtype)
    module.load_state_dict({key: cast[id(tensor)] for key, tensor in state.items()}, strict=True, assign=True)
    module.to(device)  # the buffers; assigned parameters are already there
    module.requires_grad_(False)
    leftovers = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if leftovers:
        raise CheckpointError(f"{what}: tensors left unloaded: {_sample(leftovers)}")


def _sample(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"
