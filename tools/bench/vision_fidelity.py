"""What `--fast-decode` costs in fidelity, per large JPEG, default decode vs reduced-size decode:

- pixels: mean and max absolute difference of the uint8 tiles (0-255), and their PSNR;
- features: cosine similarity of the projected features (the LLM-space tokens), mean and min over
  tokens, from the replica's own encoder;
- tokens: greedy tokens of `InternVLForConditionalGeneration.generate` (the correctness reference)
  from each image's tiles, and the fraction of positions that agree, up to the first difference.
On a seeded random-init checkpoint the features and tokens measure how much the change in pixels
moves a model of this shape, not what a trained model would answer."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dvd.types import VirMode
from tools.bench.photos import Photo
from vision_service.encoder import TileEncoder, VirPlan
from vision_service.preprocess import ResolvedTiling, preprocess_pixels

PROMPT = "Describe this image in detail."


@dataclass(frozen=True)
class FidelityRow:
    name: str
    size: tuple[int, int]
    tiles: int
    mean_abs: float
    max_abs: int
    psnr_db: float
    cosine_mean: float
    cosine_min: float
    token_agreement: float  # matching greedy tokens before the first difference / tokens generated
    tokens: int


class _Generator:
    """Greedy tokens of the reference model from pixel values, with the model's own chat template."""

    def __init__(self, checkpoint: Path) -> None:
        from transformers import InternVLForConditionalGeneration

        from dvd.checkpoint import load_processor

        self.model = InternVLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.processor = load_processor(checkpoint)

    @torch.inference_mode()
    def tokens(self, image: bytes, pixel_values: torch.Tensor, max_new_tokens: int) -> list[int]:
        """The processor builds the prompt (an image placeholder per tile); `pixel_values`, with
        as many tiles as the processor's own, replace its pixels."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[Image.open(io.BytesIO(image))], return_tensors="pt")
        if inputs["pixel_values"].shape != pixel_values.shape:
            raise ValueError(f"tiles differ: {tuple(inputs['pixel_values'].shape)} vs {tuple(pixel_values.shape)}")
        inputs["pixel_values"] = pixel_values
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return out[0, inputs["input_ids"].shape[1]:].tolist()


def _agreement(a: list[int], b: list[int]) -> float:
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), 1)


def measure_fidelity(checkpoint: Path, photos: list[Photo], max_new_tokens: int = 16) -> list[FidelityRow]:
    encoder = TileEncoder(str(checkpoint), torch.device("cpu"), torch.float32)
    generator = _Generator(checkpoint)
    opts, plan, rows = ResolvedTiling(), VirPlan(VirMode.OFF), []
    for photo in photos:
        default = preprocess_pixels(photo.data, opts)
        fast = preprocess_pixels(photo.data, opts, fast_decode=True)
        diff = (default.pixels.float() - fast.pixels.float()).abs()
        mse = float((diff**2).mean())
        a = encoder.encode(default.pixels, plan).features  # [tokens, hidden]
        b = encoder.encode(fast.pixels, plan).features
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)  # [tokens]
        ta = generator.tokens(photo.data, encoder.model_input(default.pixels), max_new_tokens)
        tb = generator.tokens(photo.data, encoder.model_input(fast.pixels), max_new_tokens)
        rows.append(FidelityRow(photo.name, photo.size, default.num_tiles, float(diff.mean()), int(diff.max()),
                                10 * math.log10(255**2 / mse) if mse else math.inf, float(cosine.mean()),
                                float(cosine.min()), _agreement(ta, tb), len(ta)))
    return rows


def format_fidelity(rows: list[FidelityRow]) -> str:
    lines = ["| image | size | tiles | mean abs px | max abs px | PSNR dB | feature cos mean | feature cos min | "
             "greedy tokens agreeing |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.size[0]}x{r.size[1]} | {r.tiles} | {r.mean_abs:.2f} | {r.max_abs} | {r.psnr_db:.1f} | "
              f"{r.cosine_mean:.4f} | {r.cosine_min:.4f} | {r.token_agreement:.0%} of {r.tokens} |" for r in rows]
    return "\n".join(lines)
