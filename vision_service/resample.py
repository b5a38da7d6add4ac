"""Pillow's BICUBIC resize of 8-bit RGB images, bit for bit, as torch ops on any device.

Why: resampling is most of the CPU time a replica spends per tile (BENCHMARKS.md, "Vision
preprocessing"), and the tiles must equal transformers' processor's, which resizes with Pillow.
Pillow's resampler (``libImaging/Resample.c``) is integer arithmetic once its coefficients are
fixed, so the same sums can run on the ViT's device and give the same bytes: a GPU replica's
CPU then only decodes the image and hands its bytes over.

The algorithm, as Pillow runs it for an 8-bit image resized with no box:

1. Per axis (``precompute_coeffs``): for output index i, the source window's centre is
   ``(i + 0.5) * scale`` (scale = in / out); the filter (bicubic, a = -0.5) is stretched by
   ``max(scale, 1)``; taps run from ``xmin = int(centre - support + 0.5)`` (clamped to 0) to
   ``int(centre + support + 0.5)`` (clamped to the size), weights ``filter((x - centre + 0.5) /
   filterscale)``, summed left to right and divided by their sum. All in float64.
2. Weights become int32 fixed point with 22 fraction bits (``normalize_coeffs_8bpc``): rounded
   half away from zero.
3. Two passes, each only when its size changes: each output byte is ``clip8((1 << 21) +
   sum(byte * weight))``, ``clip8(v) = clamp(v >> 22, 0, 255)``, so the intermediate image is
   bytes too and the pass order matters. Pillow < 13 always runs the horizontal pass first;
   Pillow 13 runs the vertical one first when the height shrinks by more than twice as many
   pixels as the width (``horizontal_first`` in its ``ImagingResampleInner``). `resize` follows
   the installed Pillow. int32 sums are exact and order-free, which is what makes the device
   result identical, not merely close.

The coefficients are computed here with numpy in the same float64 operations in the same order
(`coefficients`); `tests/vision_service/test_resample.py` checks the bytes against Pillow over
up- and down-scales, odd sizes and real photos.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import PIL
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's: two bits of headroom for negative lobes and overshoot
BICUBIC_SUPPORT = 2.0
_A = -0.5  # Pillow's bicubic parameter
# Pillow 13.0 added the vertical-first order (12.2's Resample.c has no `horizontal_first`).
PILLOW_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's ``bicubic_filter``, elementwise in float64 with its operation order."""
    x = np.abs(x)
    out = np.zeros_like(x)
    near, far = x < 1.0, (x >= 1.0) & (x < 2.0)
    xn, xf = x[near], x[far]
    out[near] = ((_A + 2.0) * xn - (_A + 3.0)) * xn * xn + 1
    out[far] = (((xf - 5) * xf + 8) * xf - 4) * _A
    return out


@lru_cache(maxsize=256)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(taps [out, K] int64 source indices, weights [out, K] int32 fixed point) for resizing one
    axis from `in_size` to `out_size`. Unused taps have weight 0 and an in-range index."""
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # [out]
    # C's (int) truncates toward zero; a negative start is clamped to 0 either way.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # [out]
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin  # [out] tap counts
    taps = xmin[:, None] + np.arange(ksize)[None, :]  # [out, K]
    used = np.arange(ksize)[None, :] < xmax[:, None]  # [out, K]
    weights = np.where(used, _bicubic((taps - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.zeros(out_size, dtype=np.float64)
    for k in range(ksize):  # left to right, as Pillow sums (numpy's sum is pairwise)
        total += weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    return np.minimum(taps, in_size - 1), fixed


@lru_cache(maxsize=256)
def _device_coefficients(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`coefficients` on `device`, copied there once: a copy from pageable memory to a GPU waits
    for everything queued before it (the ViT's kernels too), so it must not happen per image."""
    taps, weights = coefficients(in_size, out_size)
    return torch.from_numpy(taps.reshape(-1)).to(device), torch.from_numpy(weights).to(device)


# int32 products held at once per chunk of outputs: few, wide kernels on a GPU (each tap-chunk is
# one launch), cache-sized pieces on a CPU.
CHUNK_ELEMENTS = {"cuda": 1 << 25, "cpu": 1 << 22}


def default_chunk(device: torch.device) -> int:
    return CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"])


def _resample_axis(pixels: torch.Tensor, out_size: int, dim: int, chunk_elements: int) -> torch.Tensor:
    """One Pillow pass along `dim` of a uint8 tensor: each output byte is the clipped fixed-point
    sum of its taps, in int32 like Pillow. Outputs are computed in chunks: gather every tap of
    the chunk's outputs at once, multiply by their weights, sum."""
    taps_t, weights_t = _device_coefficients(pixels.shape[dim], out_size, pixels.device)  # [out * K], [out, K]
    ksize = weights_t.shape[1]
    source = pixels.movedim(dim, 0)  # [in, ...rest]
    rest = source.shape[1:]
    weights_t = weights_t.view(out_size, ksize, *([1] * len(rest)))  # [out, K, 1, ...]
    step = max(1, chunk_elements // (ksize * rest.numel()))
    out = torch.empty((out_size, *rest), dtype=torch.uint8, device=pixels.device)  # [out, ...rest]
    for first in range(0, out_size, step):
        last = min(out_size, first + step)
        gathered = source.index_select(0, taps_t[first * ksize:last * ksize]).view(last - first, ksize, *rest)
        sums = (gathered.to(torch.int32) * weights_t[first:last]).sum(1, dtype=torch.int32)  # [chunk, ...rest]
        out[first:last] = ((sums + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp_(0, 255)
    return out.movedim(0, dim)


def resize(image: torch.Tensor, size: tuple[int, int], chunk_elements: int | None = None) -> torch.Tensor:
    """image: [H, W, C] uint8 on any device -> [height, width, C] uint8, equal byte for byte to
    ``PIL.Image.resize((width, height), BICUBIC)`` of the same RGB image. `size` is (width, height),
    as Pillow takes it; `chunk_elements` bounds the int32 products held at once (default: by device)."""
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(f"expected a uint8 [H, W, C] image, got {image.dtype} {tuple(image.shape)}")
    width, height = size
    if vertical_first(image.shape[1], image.shape[0], width, height):
        passes = ((height, 0), (width, 1))
    else:
        passes = ((width, 1), (height, 0))
    for out_size, dim in passes:
        if image.shape[dim] != out_size:  # Pillow skips a pass whose size does not change
            image = _resample_axis(image, out_size, dim, chunk_elements or default_chunk(image.device))
    return image.contiguous()


def vertical_first(in_width: int, in_height: int, width: int, height: int,
                   pillow_vertical_first: bool = PILLOW_VERTICAL_FIRST) -> bool:
    """Whether the installed Pillow resamples the height first for this resize."""
    shrink_y, shrink_x = in_height - height, in_width - width
    return pillow_vertical_first and shrink_y > 0 and shrink_y > shrink_x * 2
