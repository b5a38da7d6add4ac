"""InternVL checkpoints on disk: find real ones, read one service's tensors, describe the layouts.

- `resolve_checkpoint` turns a directory or hub id into a local directory.
- `load_vision_state` / `load_language_state` / `read_tensors` read only one half's tensors from the
  safetensors shards, from either layout (HF-native or the original InternVLChatModel one).
- `assign.assign_state` is the strict, copy-free loading that each service's own builder uses
  (`vision_service.modules.build_vision_modules`, `language_service.model.build_language_model`).
- `checkpoint_layout` says which layout a checkpoint is in, and (original layout) which
  conversation template its config.json names: the services prepare prompts and images by it.
- `load_processor` is the HF processor (the correctness reference's preprocessing), also
  without torchvision.

Writing seeded random-init checkpoints (`dvd make-checkpoint`) lives in `tools.checkpoint`.
"""

from .errors import CheckpointError
from .keys import KEY_MAP, Part
from .load import (
    CheckpointLayout,
    checkpoint_layout,
    load_language_state,
    load_model_config,
    load_vision_state,
    read_tensors,
    resolve_checkpoint,
)
from .processor import ImageOnlyInternVLProcessor, load_processor

__all__ = [
    "KEY_MAP",
    "CheckpointError",
    "CheckpointLayout",
    "ImageOnlyInternVLProcessor",
    "Part",
    "checkpoint_layout",
    "load_language_state",
    "load_model_config",
    "load_processor",
    "load_vision_state",
    "read_tensors",
    "resolve_checkpoint",
]
