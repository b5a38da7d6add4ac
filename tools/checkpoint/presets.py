"""Shapes of the random-init checkpoints that `make_checkpoint` writes.

`tiny` is what the tests and the embedded `dvd serve` default load (it must load and run in well
under a second on a 2-core CPU), `small` is for CPU benchmarks, and `1b-shape` has the exact
tensor shapes of OpenGVLab/InternVL3-1B-hf (InternViT-300M + Qwen2.5-0.5B), so memory, transfer
and throughput numbers measured on it carry over to the real model.

`tiny-flash` / `small-flash` are InternVL3.5-Flash-style: the same widths, a Qwen3 decoder (as in
InternVL3.5), the ViR router and 64-token projector, written in the original `InternVLChatModel`
layout with the Flash config fields: the only layout the Flash checkpoints ship in.

Every preset keeps the real model's image geometry: 448px tiles, 14px patches, 1024 ViT tokens per
tile and pixel shuffle 0.5, so 256 LLM tokens per tile. Only widths and depths shrink.
"""

from dataclasses import dataclass, replace
from typing import Any

from transformers import InternVLConfig

from dvd.checkpoint.errors import CheckpointError

# The real checkpoint's tile geometry; the processor, the placeholder count and the vision
# service's tiling all depend on it, so no preset changes it.
IMAGE_SIZE = 448
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5
IMAGE_SEQ_LENGTH = int((IMAGE_SIZE // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)  # 256

# Embedding rows are padded to a multiple of this when the preset does not fix the vocab size,
# as real checkpoints pad theirs (Qwen2.5's 151936 rows hold a 151665-token tokenizer).
VOCAB_PAD_MULTIPLE = 64


@dataclass(frozen=True)
class VisionShape:
    """InternViT widths and depth."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class TextShape:
    """Qwen2 decoder widths and depth. `vocab_size=None` sizes the embedding to the tokenizer."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int | None = None
    tie_word_embeddings: bool = False
    rope_scaling: dict[str, Any] | None = None


@dataclass(frozen=True)
class Preset:
    """Everything that distinguishes one make-checkpoint preset from another."""

    name: str
    vision: VisionShape
    text: TextShape
    bpe_vocab_size: int  # byte-level BPE size before the special tokens are appended
    dtype: str  # dtype the safetensors are written in
    max_shard_size: str | None  # None writes a single model.safetensors
    flash: bool = False  # InternVL3.5-Flash: ViR router + mlp2, original InternVLChatModel layout
    text_model_type: str = "qwen2"  # "qwen3" for the InternVL3.5-style presets

    def __post_init__(self) -> None:
        if self.vision.hidden_size % self.vision.num_attention_heads:
            raise CheckpointError(f"preset {self.name}: vision hidden size not divisible by heads")
        if self.text.hidden_size % self.text.num_attention_heads:
            raise CheckpointError(f"preset {self.name}: text hidden size not divisible by heads")
        if self.text.num_attention_heads % self.text.num_key_value_heads:
            raise CheckpointError(f"preset {self.name}: attention heads not divisible by kv heads")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise CheckpointError(f"preset {self.name}: unsupported dtype {self.dtype}")
        if self.text_model_type not in ("qwen2", "qwen3"):
            raise CheckpointError(f"preset {self.name}: unsupported text model {self.text_model_type}")


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="tiny",
            vision=VisionShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
            text=TextShape(
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
            ),
            bpe_vocab_size=1024,
            # fp32 on disk: the tests compare split and monolithic outputs bit for bit on CPU.
            dtype="float32",
            max_shard_size=None,
        ),
        Preset(
            name="small",
            vision=VisionShape(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768),
            text=TextShape(
                hidden_size=256,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                intermediate_size=768,
            ),
            bpe_vocab_size=4096,
            dtype="bfloat16",
            # Sharded although it is small, so the index-driven loading path runs in benchmarks.
            max_shard_size="8MB",
        ),
        Preset(
            name="1b-shape",
            # InternViT-300M-448px-V2.5 as used by InternVL3-1B: qkv bias, LayerNorm, no qk norm,
            # layer scale 0.1 (transformers' InternVLVisionConfig defaults match it).
            vision=VisionShape(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
            # Qwen2.5-0.5B with InternVL's 151674-row embedding. InternVL3-1B unties lm_head from
            # the embedding (its config says tie_word_embeddings false and the original checkpoint
            # holds a separate language_model.lm_head.weight), unlike Qwen2.5-0.5B itself. Its
            # llm_config also carries rope_scaling dynamic x2; dynamic NTK only changes positions
            # past max_position_embeddings (32768), so it is kept for fidelity, not effect.
            text=TextShape(
                hidden_size=896,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                intermediate_size=4864,
                vocab_size=151674,
                tie_word_embeddings=False,
                rope_scaling={"rope_type": "dynamic", "factor": 2.0},
            ),
            bpe_vocab_size=8192,
            dtype="bfloat16",
            max_shard_size="500MB",
        ),
    )
}
# The Flash variants keep their base preset's widths, dtype and sharding.
for _base in ("tiny", "small"):
    PRESETS[f"{_base}-flash"] = replace(PRESETS[_base], name=f"{_base}-flash", flash=True, text_model_type="qwen3")


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with the valid names in the error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def embedding_rows(preset: Preset, num_tokens: int) -> int:
    """Rows of embed_tokens / lm_head for a tokenizer of `num_tokens` tokens."""
    if preset.text.vocab_size is not None:
        if preset.text.vocab_size < num_tokens:
            raise CheckpointError(f"preset {preset.name}: vocab_size smaller than the tokenizer ({num_tokens})")
        return preset.text.vocab_size
    return -(-num_tokens // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def internvl_config(preset: Preset, *, vocab_size: int, token_ids: dict[str, int]) -> InternVLConfig:
    """The InternVLConfig of a preset, field for field as OpenGVLab/InternVL3-1B-hf spells it.

    `token_ids` maps the special tokens ("<|endoftext|>", "<|im_end|>", "<IMG_CONTEXT>") to ids.
    """
    vision, text = preset.vision, preset.text
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 1000000.0}
    if text.rope_scaling is not None:
        rope = {**text.rope_scaling, "rope_theta": 1000000.0}
    text_config = {
        "model_type": preset.text_model_type,
        "architectures": [f"{preset.text_model_type.capitalize()}ForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": rope,
        "use_sliding_window": False,
        "sliding_window": None,
        # The real config inherits 70 from the Qwen2.5-32B template it was cut from; it is inert
        # without sliding windows.
        "max_window_layers": 70,
        "tie_word_embeddings": text.tie_word_embeddings,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "use_cache": True,
    }
    if preset.text_model_type == "qwen3":
        # Qwen3Config defaults head_dim to 128 whatever the width; the presets keep hidden / heads.
        text_config["head_dim"] = text.hidden_size // text.num_attention_heads
    vision_config = {
        "model_type": "internvl_vision",
        "hidden_size": vision.hidden_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "num_attention_heads": vision.num_attention_heads,
        "intermediate_size": vision.intermediate_size,
        "hidden_act": "gelu",
        "attention_bias": True,
        "use_qk_norm": False,
        "norm_type": "layer_norm",
        "layer_norm_eps": 1e-6,
        "layer_scale_init_value": 0.1,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "patch_size": [PATCH_SIZE, PATCH_SIZE],
        "num_channels": 3,
        "use_absolute_position_embeddings": True,
        "use_mask_token": False,
        # True means "no final LayerNorm" (nn.Identity) in transformers' InternViT, which is what
        # the real checkpoint has: the original InternViT feeds its last block straight to mlp1.
        "use_mean_pooling": True,
    }
    return InternVLConfig(
        architectures=["InternVLForConditionalGeneration"],
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_ids["<IMG_CONTEXT>"],
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE_RATIO,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=text.tie_word_embeddings,
        dtype=preset.dtype,
    )
