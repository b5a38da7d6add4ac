"""Seeded random-init checkpoints in the real on-disk formats (`dvd make-checkpoint`).

`make_checkpoint(preset, out_dir, seed)` writes tiny / small / 1b-shape checkpoints in the HF
on-disk format, and tiny-flash / small-flash (InternVL3.5-Flash style, with the ViR router) in the
original InternVLChatModel layout. `ensure_checkpoint` turns a preset name into a written
checkpoint directory, once.
"""

from .ensure import ensure_checkpoint
from .make import make_checkpoint, preset_names
from .presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "ensure_checkpoint", "get_preset", "make_checkpoint", "preset_names"]
