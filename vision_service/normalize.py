"""Rescale and ImageNet-normalise uint8 tiles on the ViT's device, bit-identical in float32 to
transformers' ``GotOcr2ImageProcessorPil`` (bytes * (1/255) in float64, cast to float32, then
float32 (x - mean) / std).

Every output value depends on one byte and its channel only, so a way of computing it is
bit-identical everywhere iff it is on the 768 (byte, channel) pairs. `DeviceNormalizer` checks
the float32 arithmetic (x / 255, - mean, / std; three elementwise passes) on its device once, at
construction, and falls back to a lookup in the 768-entry table where it differs. The divisor 255
is a device tensor, not a Python number: CUDA turns a division by a CPU scalar into a
multiplication by its reciprocal, which rounds differently.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def reference_table() -> np.ndarray:
    """[3, 256] float32: the normalised value of every byte, per channel, in HF's arithmetic."""
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)  # [256]
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None]  # [3, 1]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None]  # [3, 1]
    return (scaled[None, :] - mean) / std


class DeviceNormalizer:
    """uint8 tiles [N, 3, T, T] on `device` -> float32 [N, 3, T, T], rescaled and normalised there."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._divisor = torch.tensor(255.0, device=device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)  # [3, 1, 1]
        self._std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)  # [3, 1, 1]
        self._table = torch.from_numpy(reference_table()).to(device)  # [3, 256]
        self.exact_arithmetic = self._arithmetic_is_exact()

    @property
    def method(self) -> str:
        return "arithmetic" if self.exact_arithmetic else "table"

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected uint8 tiles [N, 3, T, T], got {pixels.dtype} {tuple(pixels.shape)}")
        return self._arithmetic(pixels) if self.exact_arithmetic else self.lookup(pixels)

    def _arithmetic(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":  # one pass per op over the whole batch: fewest kernel launches
            out = torch.div(pixels, self._divisor)  # uint8 / float32 -> float32, one pass
            return out.sub_(self._mean).div_(self._std)
        # On a CPU, tile by tile: a tile's planes (2.4 MB of float32) stay in cache between the
        # passes, where a whole batch would stream through memory every pass (1.6x less CPU time per
        # tile in `dvd bench vision`'s normalisation row). The bytes are widened by `copy_` (a
        # vectorised cast) and divided in place: a uint8 / float32 `div` takes torch's mixed-dtype
        # path, ~20% slower per tile for the same float32 quotient (the check below covers both).
        out = torch.empty(pixels.shape, dtype=torch.float32)
        for tile, dest in zip(pixels, out):
            dest.copy_(tile).div_(self._divisor).sub_(self._mean).div_(self._std)
        return out

    def lookup(self, pixels: torch.Tensor) -> torch.Tensor:
        """The table lookup: exact by construction, on any device."""
        out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
        for channel in range(3):
            out[:, channel] = self._table[channel][pixels[:, channel].long()]
        return out

    def _arithmetic_is_exact(self) -> bool:
        # 527 values per plane: every byte, through vectorised loops and their scalar tails alike.
        pixels = (torch.arange(3 * 527) % 256).to(torch.uint8).view(1, 3, 17, 31).to(self.device)
        return torch.equal(self._arithmetic(pixels).cpu(), self.lookup(pixels).cpu())


@lru_cache(maxsize=8)
def normalizer_for(device: torch.device) -> DeviceNormalizer:
    """One normaliser per device, built (and checked) on first use."""
    return DeviceNormalizer(device)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 tiles [N, 3, T, T] -> float32 [N, 3, T, T] on the tiles' device."""
    return normalizer_for(pixels.device)(pixels)
