"""The independent correctness reference: `InternVLForConditionalGeneration.generate` in one
process, fp32 on CPU, with inputs built by transformers' own processor and tokenizer."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image
from transformers import InternVLForConditionalGeneration

from dvd.checkpoint import load_processor


class Reference:
    def __init__(self, checkpoint: Path) -> None:
        self.model = InternVLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.processor = load_processor(checkpoint)
        self.tokenizer = self.processor.tokenizer

    @torch.inference_mode()
    def generate(self, conversation: list[dict], images: list[bytes], max_new_tokens: int) -> list[int]:
        """conversation: HF chat format with {"type": "image"} parts, images in order of appearance."""
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        pil = [Image.open(io.BytesIO(b)) for b in images] or None
        inputs = self.processor(text=[text], images=pil, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)
