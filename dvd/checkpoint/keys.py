"""Which safetensors keys belong to which service, and what they are called once loaded.

HF-native InternVL checkpoints are found with two key layouts:

- the in-memory names of transformers >= 4.52 / 5 (`InternVLForConditionalGeneration.state_dict()`),
  which some tools save as is: `model.vision_tower.*`, `model.multi_modal_projector.*`,
  `model.language_model.*`, `lm_head.*`
- the legacy LLaVA-style layout: `vision_tower.*`, `multi_modal_projector.*`,
  `language_model.model.*`, `language_model.lm_head.*`. `save_pretrained` reverses the in-memory
  names to this on save: transformers 5.23 does (checked: it is what `make_checkpoint` writes), as
  did the 4.5x releases the OpenGVLab/InternVL3-*-hf conversions ran on.

A service loads into standalone modules, whose state-dict names are the targets below:
InternVLVisionModel under `vision_tower.`, InternVLMultiModalProjector under
`multi_modal_projector.`, and the text config's causal LM (Qwen2ForCausalLM) as `model.*` +
`lm_head.weight`. Prefixes are tried in table order and the first match wins, so
`language_model.lm_head.` is tried before `language_model.model.`.
"""

from collections.abc import Callable
from enum import Enum


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
