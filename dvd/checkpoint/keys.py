"""Which safetensors keys belong to which service, and what they are called once loaded.

HF-native InternVL checkpoints exist with two key layouts:

- transformers >= 5 `save_pretrained` (and what `make_checkpoint` writes):
  `model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`
- transformers 4.52-4.5x `save_pretrained`, which reversed its in-memory names back to the legacy
  LLaVA layout on save (OpenGVLab/InternVL3-*-hf were published this way):
  `vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head.*`

A service loads into standalone modules, whose state-dict names are the targets below:
InternVLVisionModel under `vision_tower.`, InternVLMultiModalProjector under
`multi_modal_projector.`, and the text config's causal LM (Qwen2ForCausalLM) as `model.*` +
`lm_head.weight`. Prefixes are tried in table order and the first match wins, so the longer
`language_model.lm_head.` precedes `language_model.`-style prefixes.
"""

from collections.abc import Callable
from enum import Enum


class Part(Enum):
    """The service a tensor belongs to."""

    VISION = "vision"
    LANGUAGE = "language"


# (checkpoint prefix, part, prefix in the service's state dict)
KEY_MAP: tuple[tuple[str, Part, str], ...] = (
    # transformers >= 5 layout
    ("model.vision_tower.", Part.VISION, "vision_tower."),
    ("model.multi_modal_projector.", Part.VISION, "multi_modal_projector."),
    ("model.language_model.", Part.LANGUAGE, "model."),
    ("lm_head.", Part.LANGUAGE, "lm_head."),
    # transformers 4.5x layout
    ("vision_tower.", Part.VISION, "vision_tower."),
    ("multi_modal_projector.", Part.VISION, "multi_modal_projector."),
    ("language_model.lm_head.", Part.LANGUAGE, "lm_head."),
    ("language_model.model.", Part.LANGUAGE, "model."),
)


def rename(key: str) -> tuple[Part, str] | None:
    """(part, service-side name) of a checkpoint key, or None for a key no layout knows."""
    for prefix, part, target in KEY_MAP:
        if key.startswith(prefix):
            return part, target + key[len(prefix) :]
    return None


def selector(part: Part) -> Callable[[str], str | None]:
    """A `read_tensors` selector keeping the keys of `part`, renamed for that service."""

    def select(key: str) -> str | None:
        renamed = rename(key)
        if renamed is None or renamed[0] is not part:
            return None
        return renamed[1]

    return select
