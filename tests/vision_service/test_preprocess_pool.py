"""The preprocessing stage: threads sized to the replica's CPUs, the event loop left free, errors
passed through; and the optional reduced-size JPEG decode, which only ever touches JPEGs at least
twice the tile canvas and keeps the grid of the full-size image."""

from __future__ import annotations

import asyncio
import io
import os

import pytest
import torch
from PIL import Image

from dvd.config import VisionConfig
from tests.conftest import jpeg
from vision_service.__main__ import parse_config
from vision_service.preprocess import ImageDecodeError, ResolvedTiling, preprocess, preprocess_pixels
from vision_service.preprocess_pool import PreprocessPool, default_workers
from vision_service.tiling_card import preprocess_card, preprocess_pixels_card


def test_default_workers_follow_the_affinity_mask():
    assert default_workers() == len(os.sched_getaffinity(0))


def test_workers_and_fast_decode_are_flags():
    cfg = parse_config(["--model", "m", "--preprocess-workers", "3", "--fast-decode"])
    assert (cfg.preprocess_workers, cfg.fast_decode) == (3, True)
    assert (VisionConfig(model="m").preprocess_workers, VisionConfig(model="m").fast_decode) == (0, False)
    with pytest.raises(ValueError, match="preprocess_workers"):
        VisionConfig(model="m", preprocess_workers=-1)
    with pytest.raises(ValueError, match="at least one"):
        PreprocessPool(preprocess_pixels, 0, 1 << 20)


async def test_pool_tiles_off_the_event_loop_and_passes_errors_through():
    pool = PreprocessPool(preprocess_pixels, 2, 64 * 1024 * 1024)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        images = [jpeg(1344, 896, seed) for seed in range(4)]
        results = await asyncio.gather(*(pool.run(data, ResolvedTiling()) for data in images))
        with pytest.raises(ImageDecodeError):
            await pool.run(b"not an image", ResolvedTiling())
    finally:
        task.cancel()
        pool.close()
    assert ticks > 1  # the loop kept running while the workers decoded and resized
    for data, tiles in zip(images, results):
        assert tiles.pixels.dtype == torch.uint8 and tiles.pixels.shape == (7, 3, 448, 448)
        assert torch.equal(tiles.pixels, preprocess_pixels(data, ResolvedTiling()).pixels)


def test_fast_decode_keeps_the_full_size_grid_and_reports_the_full_size():
    data = jpeg(3000, 2000)  # grid (3, 2): canvas 1344x896, the file is > 2x that
    default = preprocess_pixels(data, ResolvedTiling())
    fast = preprocess_pixels(data, ResolvedTiling(), fast_decode=True)
    assert (fast.grid, fast.num_tiles, fast.original_size) == (default.grid, default.num_tiles, (3000, 2000))
    assert not torch.equal(fast.pixels, default.pixels)  # decoded at half size, then resized
    error = (fast.pixels.float() - default.pixels.float()).abs().mean()
    assert error < 3  # mean abs error in byte units; BENCHMARKS.md has the measured fidelity


@pytest.mark.parametrize("size,fmt", [((1500, 1000), "JPEG"), ((3000, 2000), "PNG")])
def test_fast_decode_leaves_small_jpegs_and_other_formats_alone(size, fmt):
    image = Image.open(io.BytesIO(jpeg(*size)))
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=90)
    data = buf.getvalue()
    fast = preprocess_pixels(data, ResolvedTiling(), fast_decode=True)
    assert torch.equal(fast.pixels, preprocess_pixels(data, ResolvedTiling()).pixels)
    assert torch.equal(fast.pixels, preprocess_pixels(data, ResolvedTiling(), fast_decode=False).pixels)
    assert fast.original_size == size and preprocess(data, ResolvedTiling()).original_size == size


def test_the_cards_uint8_tiles_normalise_to_the_cards_preprocessing():
    from vision_service.normalize import normalize

    for data in (jpeg(750, 300), jpeg(1344, 896, seed=1)):
        opts = ResolvedTiling(min_tiles=4, max_tiles=4)
        tiles = preprocess_pixels_card(data, opts)
        expected = preprocess_card(data, opts)
        assert tiles.grid == expected.grid and torch.equal(normalize(tiles.pixels), expected.pixel_values)
