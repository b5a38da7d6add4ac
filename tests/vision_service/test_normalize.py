"""Normalisation on the ViT's device equals the CPU path it replaced (a numpy table lookup over
[N, T, T, 3] tiles, copied here verbatim as the reference) bit for bit, over many images; on CUDA
(when there is one) through page-locked memory and a non-blocking copy."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vision_service.encoder import TileEncoder
from vision_service.normalize import DeviceNormalizer, normalize, reference_table
from vision_service.preprocess import ResolvedTiling, preprocess, preprocess_pixels

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cpu_normalize_before(tiles: np.ndarray) -> np.ndarray:
    """The vision service's `_normalize` before normalisation moved to the device:
    tiles [N, T, T, 3] uint8 -> [N, 3, T, T] float32."""
    table = reference_table()
    out = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), dtype=np.float32)
    for channel in range(3):
        out[:, channel] = table[channel][tiles[..., channel]]
    return out


def photo_like(width: int, height: int, seed: int) -> bytes:
    """Smooth gradients, hard edges and noise, as JPEG or PNG: every byte value turns up."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs * ys) % 256], -1)
    pixels = np.clip(base + rng.integers(-60, 61, size=(height, width, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG" if seed % 2 else "PNG", quality=85)
    return buf.getvalue()


IMAGES = [photo_like(w, h, seed) for seed, (w, h) in enumerate(
    [(448, 448), (640, 480), (1024, 768), (300, 900), (1500, 1000), (97, 61), (896, 448), (1280, 720)] * 2)]


def reference(data: bytes, opts: ResolvedTiling) -> torch.Tensor:
    pixels = preprocess_pixels(data, opts).pixels  # [N, 3, T, T] uint8
    return torch.from_numpy(cpu_normalize_before(pixels.permute(0, 2, 3, 1).numpy()))


@pytest.mark.parametrize("opts", [ResolvedTiling(), ResolvedTiling(max_tiles=4, use_thumbnail=False)])
def test_device_normalisation_equals_the_cpu_path_over_many_images(opts):
    normalizer = DeviceNormalizer(torch.device("cpu"))
    assert normalizer.exact_arithmetic  # float32 arithmetic on this CPU reproduces the table
    for index, data in enumerate(IMAGES):
        pixels = preprocess_pixels(data, opts).pixels
        expected = reference(data, opts)
        assert torch.equal(normalizer(pixels), expected), index
        assert torch.equal(normalizer.lookup(pixels), expected), index
        assert torch.equal(preprocess(data, opts).pixel_values, expected), index


def test_every_byte_of_every_channel_and_random_tiles():
    tiles = torch.randint(0, 256, (3, 448, 448, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tiles[0, 0, :256] = torch.arange(256, dtype=torch.uint8)[:, None]
    expected = torch.from_numpy(cpu_normalize_before(tiles.numpy()))
    assert torch.equal(normalize(tiles.permute(0, 3, 1, 2).contiguous()), expected)


def test_rejects_anything_but_uint8_planes():
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))


def test_the_vit_sees_the_same_input_and_output_from_bytes(tiny_ckpt):
    encoder = TileEncoder(str(tiny_ckpt), torch.device("cpu"), torch.float32)
    data = IMAGES[4]
    pixels = preprocess_pixels(data, ResolvedTiling(max_tiles=2)).pixels
    floats = preprocess(data, ResolvedTiling(max_tiles=2)).pixel_values
    assert torch.equal(encoder.model_input(pixels), floats)
    assert torch.equal(encoder.vit(pixels), encoder.vit(floats))


@CUDA
def test_cuda_normalisation_through_pinned_memory_equals_the_cpu_path():
    device = torch.device("cuda")
    for data in IMAGES[:8]:
        tiles = preprocess_pixels(data, ResolvedTiling(), pin_memory=True)
        assert tiles.pixels.is_pinned()
        on_device = tiles.pixels.to(device, non_blocking=True)
        assert torch.equal(normalize(on_device).cpu(), reference(data, ResolvedTiling()))
