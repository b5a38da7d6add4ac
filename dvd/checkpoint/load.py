"""Find a checkpoint and read one service's tensors out of it.

The vision and language services each read only their own tensors: `read_tensors` opens every
safetensors shard lazily (memory-mapped) and copies out just the keys a selector keeps, so a
vision replica never holds the LLM and vice versa, and neither ever materialises the whole model.
"""

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import is_offline_mode, snapshot_download
from safetensors import safe_open
from transformers import AutoConfig, InternVLConfig

from .errors import CheckpointError
from .keys import Part, rename, selector, split_fused_qkv
from .original import config_from_original, is_original

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Everything a service reads; skips duplicate .bin/.pth weights that some hub repos also carry.
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt"]


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local checkpoint directory as is, or a hub id (`org/name`) resolved to its local snapshot.

    Hub ids go through `huggingface_hub.snapshot_download`, so the local cache is used when it has
    the files, and HF_HUB_OFFLINE=1 means cache only. Any failure raises CheckpointError naming
    the id and the cause; nothing retries.
    """
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise CheckpointError(f"checkpoint {text} is a file; expected a checkpoint directory")
    if text.startswith(("/", ".", "~")) or text.count("/") != 1:
        raise CheckpointError(f"checkpoint directory {text} does not exist (and it is not a hub id 'org/name')")
    try:
        return Path(snapshot_download(text, allow_patterns=HUB_FILES, local_files_only=is_offline_mode()))
    except Exception as exc:
        # The hub client raises many unrelated types (HTTP, connection, validation, cache, OSError)
        # across versions; callers need one: the cause stays chained.
        offline = " (HF_HUB_OFFLINE is set, so only the local cache was searched)" if is_offline_mode() else ""
        raise CheckpointError(
            f"checkpoint {text!r} is not a local directory, and as a hub id it cannot be resolved{offline}: {exc}"
        ) from exc


@dataclass(frozen=True)
class CheckpointLayout:
    """What the on-disk layout decides beyond the tensors: how prompts and images are prepared.

    The original layout is served as the published `model.chat` serves it (its config.json's
    conversation template, the model cards' `dynamic_preprocess`); an HF-native one as
    transformers' InternVLProcessor does (the tokenizer's chat template, GotOcr2 tiling)."""

    original: bool  # the InternVLChatModel layout (else HF-native InternVLForConditionalGeneration)
    template: str | None  # original layout: the `conversation.py` template config.json names


def checkpoint_layout(ckpt: str | Path) -> CheckpointLayout:
    """The layout of a local checkpoint directory, read from its config.json."""
    raw = _original_raw_config(Path(ckpt))
    if raw is None:
        return CheckpointLayout(original=False, template=None)
    return CheckpointLayout(original=True, template=raw.get("template") or None)


def load_model_config(ckpt: str | Path) -> InternVLConfig:
    """The checkpoint's InternVLConfig, with its text_config and vision_config.

    An original-layout (InternVLChatModel) config.json is translated, without remote code; its
    Flash fields become `flash_mode` / `flash_relative_threshold` / `flash_absolute_threshold`.
    """
    raw = _original_raw_config(Path(ckpt))
    if raw is not None:
        return config_from_original(raw, Path(ckpt))
    config = AutoConfig.from_pretrained(ckpt)
    if not isinstance(config, InternVLConfig):
        raise CheckpointError(f"{ckpt} holds a {type(config).__name__}, not an HF-native InternVL checkpoint")
    return config


def _original_raw_config(ckpt: Path) -> dict[str, Any] | None:
    """The parsed config.json when it is the original layout's, else None."""
    config_path = ckpt / "config.json"
    if not config_path.is_file():
        return None
    raw = json.loads(config_path.read_text())
    return raw if is_original(raw) else None


def read_tensors(
    ckpt: str | Path, select: Callable[[str], str | None], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read the tensors whose `select(key)` is not None, keyed by that new name.

    Only the selected tensors are copied out of the (memory-mapped) shards, straight onto `device`.
    """
    ckpt = Path(ckpt)
    wanted: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    for key, shard in _weight_map(ckpt).items():
        name = select(key)
        if name is not None:
            wanted[ckpt / shard].append((key, name))
    tensors: dict[str, torch.Tensor] = {}
    for shard_path, keys in sorted(wanted.items()):
        with safe_open(shard_path, framework="pt", device=str(device)) as shard:
            for key, name in keys:
                if name in tensors:
                    raise CheckpointError(f"{ckpt}: two checkpoint keys map to {name} (second: {key})")
                tensors[name] = shard.get_tensor(key)
    return tensors


def load_vision_state(ckpt: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """ViT and projector tensors, named `vision_tower.*` and `multi_modal_projector.*`, plus a Flash
    checkpoint's router and second projector (`pooling_before_gating.*`, `gating.*`, `mlp2.*`).
    InternViT's fused qkv (original layout) comes back split into q_proj / k_proj / v_proj."""
    _check_known_layout(Path(ckpt))
    state = read_tensors(ckpt, selector(Part.VISION), device)
    if not state:
        raise CheckpointError(f"{ckpt}: no vision tensors (vision_tower.* / vision_model.* / mlp1.*) found")
    try:
        return split_fused_qkv(state)
    except ValueError as exc:
        raise CheckpointError(f"{ckpt}: {exc}") from exc


def load_language_state(ckpt: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """LLM tensors named for `AutoModelForCausalLM.from_config(text_config)`: `model.*` + `lm_head.weight`.

    A tied checkpoint stores no lm_head; then `lm_head.weight` is the embedding tensor itself
    (same object, no copy), which is what tying means.
    """
    _check_known_layout(Path(ckpt))
    state = read_tensors(ckpt, selector(Part.LANGUAGE), device)
    if not state:
        raise CheckpointError(f"{ckpt}: no language tensors (language_model.* / lm_head.*) found")
    if "lm_head.weight" not in state:
        config = load_model_config(ckpt)
        # transformers 5 ties on the top-level flag, 4.x on the text config's; either means tied.
        tied = config.tie_word_embeddings or config.text_config.tie_word_embeddings
        if not tied or "model.embed_tokens.weight" not in state:
            raise CheckpointError(f"{ckpt}: no lm_head weight and the config does not tie it to the embedding")
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def _check_known_layout(ckpt: Path) -> None:
    # A key in no known layout means another format: loading "our" keys from it and dropping the
    # rest would serve a model that is silently missing parts.
    unknown = sorted(key for key in _weight_map(ckpt) if rename(key) is None)
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise CheckpointError(
            f"{ckpt}: {len(unknown)} tensors in no known InternVL key layout ({shown}); expected "
            "InternVLForConditionalGeneration or original InternVLChatModel keys"
        )


def _weight_map(ckpt: Path) -> dict[str, str]:
    """Checkpoint key -> shard file name, from the index when sharded."""
    index_path = ckpt / INDEX_FILE
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        missing = sorted({shard for shard in weight_map.values() if not (ckpt / shard).is_file()})
        if missing:
            raise CheckpointError(f"{ckpt}: shards listed in {INDEX_FILE} are missing: {missing}")
        return weight_map
    single = ckpt / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as shard:
            return dict.fromkeys(shard.keys(), SINGLE_FILE)
    raise CheckpointError(f"{ckpt}: neither {SINGLE_FILE} nor {INDEX_FILE}; only safetensors checkpoints are supported")
