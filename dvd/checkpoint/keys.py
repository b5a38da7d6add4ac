"""Which safetensors keys belong to which service, and what they are called once loaded.

HF-native InternVL checkpoints are found with two key layouts:

- the in-memory names of transformers >= 4.52 / 5 (`InternVLForConditionalGeneration.state_dict()`),
  which some tools save as is: `model.vision_tower.*`, `model.multi_modal_projector.*`,
  `model.language_model.*`, `lm_head.*`
- the legacy LLaVA-style layout: `vision_tower.*`, `multi_modal_projector.*`,
  `language_model.model.*`, `language_model.lm_head.*`. `save_pretrained` reverses the in-memory
  names to this on save: transformers 5.23 does (checked: it is what `make_checkpoint` writes), as
  did the 4.5x releases the OpenGVLab/InternVL3-*-hf conversions ran on.

The original `InternVLChatModel` layout (OpenGVLab's remote-code checkpoints, the only one the
InternVL3.5-Flash models ship in) is `ORIGINAL_KEY_MAP`, mirroring transformers'
convert_internvl_weights_to_hf.py: `vision_model.*` (InternViT, fused `attn.qkv`), `mlp1.*`, the
Flash heads `mlp2.*` / `pooling_before_gating.*` / `gating.*` (kept by name: the vision service's
`FlashHeads` uses the published module names), and `language_model.*`. The fused qkv is renamed
to `attention.qkv` here and cut into q_proj / k_proj / v_proj after reading (`split_fused_qkv`).

A service loads into standalone modules, whose state-dict names are the targets below:
InternVLVisionModel under `vision_tower.`, InternVLMultiModalProjector under
`multi_modal_projector.`, FlashHeads under `mlp2.` / `pooling_before_gating.` / `gating.`, and the
text config's causal LM (Qwen2/Qwen3ForCausalLM) as `model.*` + `lm_head.weight`. Prefixes are
tried in table order and the first match wins, so `language_model.lm_head.` is tried before
`language_model.model.`.
"""

import re
from collections.abc import Callable
from enum import Enum
from functools import lru_cache

import torch


class Part(Enum):
    """The service a tensor belongs to."""

    VISION = "vision"
    LANGUAGE = "language"


# (checkpoint prefix, part, prefix in the service's state dict)
KEY_MAP: tuple[tuple[str, Part, str], ...] = (
    # in-memory (transformers >= 4.52) layout
    ("model.vision_tower.", Part.VISION, "vision_tower."),
    ("model.multi_modal_projector.", Part.VISION, "multi_modal_projector."),
    ("model.language_model.", Part.LANGUAGE, "model."),
    ("lm_head.", Part.LANGUAGE, "lm_head."),
    # legacy layout, written by save_pretrained
    ("vision_tower.", Part.VISION, "vision_tower."),
    ("multi_modal_projector.", Part.VISION, "multi_modal_projector."),
    ("language_model.lm_head.", Part.LANGUAGE, "lm_head."),
    ("language_model.model.", Part.LANGUAGE, "model."),
)


_VIT = "vision_model.encoder.layers.{n}."
_TOWER = "vision_tower.encoder.layer.{n}."
FLASH_PREFIXES = ("mlp2.", "pooling_before_gating.", "gating.")

# (original-layout key, part, service-side name); {n} is a layer number, {p} the rest of the key.
ORIGINAL_KEY_MAP: tuple[tuple[str, Part, str], ...] = (
    ("vision_model.embeddings.class_embedding", Part.VISION, "vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", Part.VISION, "vision_tower.embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.{p}", Part.VISION, "vision_tower.embeddings.patch_embeddings.projection.{p}"),
    (_VIT + "attn.qkv.{p}", Part.VISION, _TOWER + "attention.qkv.{p}"),  # fused: split_fused_qkv
    (_VIT + "attn.proj.{p}", Part.VISION, _TOWER + "attention.projection_layer.{p}"),
    (_VIT + "attn.q_norm.{p}", Part.VISION, _TOWER + "attention.q_norm.{p}"),  # InternViT-6B only
    (_VIT + "attn.k_norm.{p}", Part.VISION, _TOWER + "attention.k_norm.{p}"),
    (_VIT + "mlp.{p}", Part.VISION, _TOWER + "mlp.{p}"),
    (_VIT + "norm1.{p}", Part.VISION, _TOWER + "layernorm_before.{p}"),
    (_VIT + "norm2.{p}", Part.VISION, _TOWER + "layernorm_after.{p}"),
    (_VIT + "ls1", Part.VISION, _TOWER + "lambda_1"),
    (_VIT + "ls2", Part.VISION, _TOWER + "lambda_2"),
    ("mlp1.0.{p}", Part.VISION, "multi_modal_projector.layer_norm.{p}"),
    ("mlp1.1.{p}", Part.VISION, "multi_modal_projector.linear_1.{p}"),
    ("mlp1.3.{p}", Part.VISION, "multi_modal_projector.linear_2.{p}"),
    *((prefix + "{p}", Part.VISION, prefix + "{p}") for prefix in FLASH_PREFIXES),
    ("language_model.lm_head.{p}", Part.LANGUAGE, "lm_head.{p}"),
    ("language_model.model.{p}", Part.LANGUAGE, "model.{p}"),
)


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", r"(?P<p>.+)")
    return re.compile(escaped + "$")


def _translate(key: str, source: str, target: str) -> str | None:
    match = _pattern(source).match(key)
    return None if match is None else target.format(**match.groupdict())


def rename(key: str) -> tuple[Part, str] | None:
    """(part, service-side name) of a checkpoint key in any known layout, or None."""
    for prefix, part, target in KEY_MAP:
        if key.startswith(prefix):
            return part, target + key[len(prefix) :]
    for source, part, target in ORIGINAL_KEY_MAP:
        name = _translate(key, source, target)
        if name is not None:
            return part, name
    return None


def to_original(name: str) -> str:
    """The original-layout key of a service-side name (what `make_checkpoint` writes for Flash)."""
    for source, _, target in ORIGINAL_KEY_MAP:
        key = _translate(name, target, source)
        if key is not None:
            return key
    raise KeyError(f"{name} has no original InternVLChatModel key")


def split_fused_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut each InternViT `attention.qkv.{weight,bias}` (rows q, k, v) into q_proj/k_proj/v_proj."""
    out = {}
    for name, tensor in state.items():
        if ".attention.qkv." not in name:
            out[name] = tensor
            continue
        if tensor.shape[0] % 3:
            raise ValueError(f"{name}: fused qkv with {tensor.shape[0]} rows is not divisible by 3")
        for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            out[name.replace(".attention.qkv.", f".attention.{proj}.")] = chunk
    return out


def fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `split_fused_qkv`: q_proj/k_proj/v_proj back into one `attention.qkv`."""
    out = {}
    for name, tensor in state.items():
        if ".attention.q_proj." in name:
            parts = [state[name.replace(".q_proj.", f".{proj}.")] for proj in ("q_proj", "k_proj", "v_proj")]
            out[name.replace(".attention.q_proj.", ".attention.qkv.")] = torch.cat(parts)
        elif ".attention.k_proj." not in name and ".attention.v_proj." not in name:
            out[name] = tensor
    return out


def selector(part: Part) -> Callable[[str], str | None]:
    """A `read_tensors` selector keeping the keys of `part`, renamed for that service."""

    def select(key: str) -> str | None:
        renamed = rename(key)
        if renamed is None or renamed[0] is not part:
            return None
        return renamed[1]

    return select
