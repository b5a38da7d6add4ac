"""InternVL checkpoints: make seeded random-init ones, find real ones, load one service's half.

- `make_checkpoint(preset, out_dir, seed)` writes tiny / small / 1b-shape checkpoints in the HF
  on-disk format, and tiny-flash / small-flash (InternVL3.5-Flash style, with the ViR router) in
  the original InternVLChatModel layout (the `dvd make-checkpoint` command).
- `resolve_checkpoint` turns a directory or hub id into a local directory.
- `build_vision_modules` / `build_language_model` give each service its modules from either
  layout, reading only its own tensors (`load_vision_state` / `load_language_state` / `read_tensors` underneath).
- `load_processor` is the HF processor (the correctness reference's preprocessing), also
  without torchvision.
"""

from .build import VisionModules, build_language_model, build_vision_modules
from .errors import CheckpointError
from .keys import KEY_MAP, Part
from .load import load_language_state, load_model_config, load_vision_state, read_tensors, resolve_checkpoint
from .make import make_checkpoint, preset_names
from .presets import PRESETS, Preset, get_preset
from .processor import ImageOnlyInternVLProcessor, load_processor

__all__ = [
    "KEY_MAP",
    "PRESETS",
    "CheckpointError",
    "ImageOnlyInternVLProcessor",
    "Part",
    "Preset",
    "VisionModules",
    "build_language_model",
    "build_vision_modules",
    "get_preset",
    "load_language_state",
    "load_model_config",
    "load_processor",
    "load_vision_state",
    "make_checkpoint",
    "preset_names",
    "read_tensors",
    "resolve_checkpoint",
]
