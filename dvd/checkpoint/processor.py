"""The HF InternVL processor of a checkpoint, with or without torchvision.

transformers 5.23 cannot build InternVLProcessor without torchvision: the processor declares a
`video_processor` attribute, and both `AutoProcessor.from_pretrained` ("requires torchvision")
and the plain constructor (class lookup of VideoProcessorMixin) fail even when no video is ever
passed (upstream transformers#48556 / #48558). The image path needs none of it, so without
torchvision `load_processor` returns `ImageOnlyInternVLProcessor`: the same class minus the video
attribute, built from the checkpoint's own tokenizer, image processor (PIL backend) and
processor_config.json. It expands `<IMG_CONTEXT>` exactly as InternVLProcessor does, which is
what the correctness reference (HF `generate` in one process) needs. The image processor is
`GotOcr2ImageProcessorPil` by name (every InternVL-hf checkpoint's, and what `AutoImageProcessor`
picks without torchvision on 5.24): transformers 5.17's `AutoImageProcessor` refuses to load at
all without torchvision.
"""

import json
from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer, GotOcr2ImageProcessorPil, InternVLProcessor, ProcessorMixin
from transformers.utils import is_torchvision_available


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """InternVLProcessor without a video processor; images and text behave identically."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        # ProcessorMixin takes its attribute list from this signature, so with no `video_processor`
        # parameter it never looks the (torchvision-only) video processor class up; the None
        # passed positionally below falls off the end of that list.
        super().__init__(
            image_processor, tokenizer, None, image_seq_length=image_seq_length, chat_template=chat_template, **kwargs
        )


def load_processor(ckpt: str | Path) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained(ckpt)` where torchvision exists, else the image-only equivalent."""
    if is_torchvision_available():
        return AutoProcessor.from_pretrained(ckpt)
    ckpt = Path(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    processor_config = json.loads((ckpt / "processor_config.json").read_text())
    return ImageOnlyInternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil.from_pretrained(ckpt),
        tokenizer=tokenizer,
        image_seq_length=processor_config.get("image_seq_length", 256),
        chat_template=tokenizer.chat_template,
    )
