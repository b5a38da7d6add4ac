"""`vision_service.resample` against Pillow itself: the same bytes for every size pair, both pass
orders, and the real photos the vision bench uses; the device (CUDA when present) included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vision_service import resample
from vision_service.resample import coefficients, resize, vertical_first

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def pillow(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def ours(pixels: np.ndarray, size: tuple[int, int], device: str = "cpu") -> np.ndarray:
    return resize(torch.from_numpy(pixels).to(device), size).cpu().numpy()


def random_pairs(count: int, seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    return [(tuple(int(v) for v in rng.integers(1, 300, 2)), tuple(int(v) for v in rng.integers(1, 400, 2)))
            for _ in range(count)]


# Edge cases: 1-pixel sources, one axis unchanged, the tiling's real targets, large squeezes
# (a 4K-like source onto one thumbnail: 37 taps), height-dominated shrinks (vertical first).
EDGES = [((1, 1), (448, 448)), ((2, 1000), (448, 448)), ((1000, 2), (448, 448)), ((448, 300), (448, 896)),
         ((800, 448), (896, 448)), ((451, 300), (448, 896)), ((1411, 1411), (1344, 1344)), ((2016, 1512), (448, 448)),
         ((97, 61), (448, 448)), ((300, 900), (448, 1344)), ((640, 480), (1344, 896)), ((30, 1200), (448, 448))]


@pytest.mark.parametrize("device", DEVICES)
def test_resize_equals_pillow_on_random_and_edge_sizes(device):
    rng = np.random.default_rng(7)
    pairs = random_pairs(120, seed=3) + EDGES
    orders = set()
    for (width, height), target in pairs:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        np.testing.assert_array_equal(ours(pixels, target, device), pillow(pixels, target),
                                      err_msg=f"{width}x{height} -> {target[0]}x{target[1]}")
        orders.add(vertical_first(width, height, *target))
    assert orders == ({True, False} if resample.PILLOW_VERTICAL_FIRST else {False})


def test_resize_equals_pillow_on_real_photos():
    from skimage import data

    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        pixels = np.ascontiguousarray(getattr(data, name)()[..., :3])
        height, width = pixels.shape[:2]
        for target in ((448, 448), (1344, 896), (896, 1344), (width // 3, height // 2)):
            np.testing.assert_array_equal(ours(pixels, target), pillow(pixels, target), err_msg=f"{name} -> {target}")


def test_pass_order_matters_and_follows_pillow(monkeypatch):
    """The order is not cosmetic: the two orders give different bytes for a height-dominated
    shrink, and only the installed Pillow's order matches it."""
    pixels = np.random.default_rng(0).integers(0, 256, (1000, 20, 3), dtype=np.uint8)
    target = (448, 448)
    expected = pillow(pixels, target)
    np.testing.assert_array_equal(ours(pixels, target), expected)
    monkeypatch.setattr(resample, "vertical_first", lambda *args: not vertical_first(*args))
    assert not np.array_equal(ours(pixels, target), expected)
    assert not vertical_first(20, 1000, 448, 448, pillow_vertical_first=False)  # Pillow < 13: always horizontal first


def test_coefficients_are_pillows_fixed_point():
    taps, weights = coefficients(1000, 448)
    assert taps.shape == weights.shape and weights.dtype == np.int32
    assert taps.min() >= 0 and taps.max() <= 999
    # Each row's weights sum to one in 22-bit fixed point, up to the rounding of each weight.
    assert np.abs(weights.astype(np.int64).sum(1) - (1 << resample.PRECISION_BITS)).max() <= weights.shape[1]
    with pytest.raises(ValueError, match="positive"):
        coefficients(0, 10)


def test_resize_rejects_what_is_not_a_uint8_image():
    with pytest.raises(ValueError, match="uint8"):
        resize(torch.zeros(4, 4, 3), (2, 2))
    with pytest.raises(ValueError, match="uint8"):
        resize(torch.zeros(4, 4, dtype=torch.uint8), (2, 2))


@pytest.mark.parametrize("chunk_elements", [1, 5_000, 1 << 30])
def test_any_chunking_gives_the_same_bytes(chunk_elements):
    """One output per chunk, a few, or the whole pass at once: the chunks partition the outputs."""
    pixels = np.random.default_rng(5).integers(0, 256, (301, 157, 3), dtype=np.uint8)
    for target in ((448, 448), (60, 90), (157, 20)):
        got = resize(torch.from_numpy(pixels), target, chunk_elements).numpy()
        np.testing.assert_array_equal(got, pillow(pixels, target))
