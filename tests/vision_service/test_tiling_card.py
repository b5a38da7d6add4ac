"""Original-layout preprocessing must equal the InternVL model cards' `load_image` bit for bit
(`tests/model_card.py`: the cards' `dynamic_preprocess` and transform, written out in the test
tree), tie order and `convert('RGB')` included; HF-native checkpoints keep transformers' processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dvd.config import VisionConfig
from tests import model_card
from tests.vision_service.test_preprocess import encode, hf_pixel_values, hf_processor, mode_images, png_bytes
from vision_service.core import VisionCore
from vision_service.normalize import reference_table
from vision_service.preprocess import (
    HF_COMPOSITES_TRANSPARENCY,
    ImageDecodeError,
    ResolvedTiling,
    choose_grid,
    preprocess,
    preprocess_pixels,
)
from vision_service.tiling_card import choose_grid_card, preprocess_card, preprocess_pixels_card, target_ratios

__all__ = ["hf_processor"]  # the fixture, imported for the HF side of the alpha tests

# (min_tiles, max_tiles): the defaults, min == max (where equal-count ties decide), and wide bounds
BOUNDS = [(1, 1), (1, 6), (1, 12), (2, 4), (3, 9), (4, 4), (6, 6), (8, 8), (12, 12), (2, 12), (5, 40), (1, 40)]


@pytest.mark.parametrize("min_tiles,max_tiles", BOUNDS)
def test_grid_scan_matches_the_model_card(min_tiles, max_tiles):
    opts = ResolvedTiling(min_tiles=min_tiles, max_tiles=max_tiles)
    widths = list(range(1, 3000, 41)) + [300, 448, 750, 896, 1344, 1792]
    heights = list(range(1, 3000, 59)) + [300, 448, 896, 1344]
    ratios = model_card.card_target_ratios(min_tiles, max_tiles)  # what card_grid builds, built once
    for width in widths:
        for height in heights:
            expected = model_card.find_closest_aspect_ratio(width / height, ratios, width, height, 448)
            assert choose_grid_card(width, height, opts) == expected, (width, height)


def test_the_scan_covers_grids_where_the_card_and_hf_differ():
    opts = ResolvedTiling(min_tiles=4, max_tiles=4)
    assert choose_grid_card(750, 300, opts) == (4, 1)
    assert choose_grid(750, 300, opts) == (2, 2)
    assert model_card.card_grid(750, 300, 4, 4) == (4, 1)
    assert target_ratios(4, 4) == tuple(model_card.card_target_ratios(4, 4))


@pytest.mark.parametrize("width,height,min_tiles,max_tiles", [
    (10, 10, 1, 12), (448, 448, 1, 12), (896, 448, 1, 12), (1000, 333, 1, 12), (300, 2000, 1, 12),
    (750, 300, 4, 4), (750, 300, 2, 4), (1344, 896, 6, 6), (640, 640, 3, 9), (1500, 1500, 1, 12), (700, 500, 1, 1),
])
def test_pixels_match_the_model_card(width, height, min_tiles, max_tiles):
    data = png_bytes(width, height, seed=width + height)
    got = preprocess_card(data, ResolvedTiling(min_tiles=min_tiles, max_tiles=max_tiles))
    expected = model_card.load_image(data, min_num=min_tiles, max_num=max_tiles)
    assert got.pixel_values.dtype == torch.float32 and got.pixel_values.shape == expected.shape
    assert torch.equal(got.pixel_values, expected)
    assert got.num_tiles == expected.shape[0]


def test_without_thumbnail_matches_the_model_card():
    data = png_bytes(1344, 896, seed=5)
    got = preprocess_card(data, ResolvedTiling(use_thumbnail=False))
    assert torch.equal(got.pixel_values, model_card.load_image(data, use_thumbnail=False))


@pytest.mark.parametrize("name,data", mode_images().items())
def test_every_mode_matches_the_model_card(name, data):
    got = preprocess_card(data, ResolvedTiling())
    assert torch.equal(got.pixel_values, model_card.load_image(data)), name


def hidden_colour_images() -> dict[str, bytes]:
    """Transparent pixels whose stored colour is not white: where convert('RGB') and HF's
    composite-on-white disagree."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(300, 750, 3), dtype=np.uint8)
    alpha = np.where(rng.random((300, 750)) < 0.5, 0, 255).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    la = Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA")
    palette = Image.fromarray(rgb).quantize(colors=32)
    return {"rgba": encode(rgba), "la": encode(la), "palette_transparent": encode(palette, transparency=0)}


@pytest.mark.parametrize("min_tiles,max_tiles", [(1, 12), (4, 4)])
@pytest.mark.parametrize("name,data", hidden_colour_images().items())
def test_transparency_follows_the_layout(hf_processor, name, data, min_tiles, max_tiles):
    opts = ResolvedTiling(min_tiles=min_tiles, max_tiles=max_tiles)
    card = preprocess_card(data, opts).pixel_values
    hf = preprocess(data, opts).pixel_values
    assert torch.equal(card, model_card.load_image(data, min_num=min_tiles, max_num=max_tiles)), name
    assert torch.equal(hf, hf_pixel_values(hf_processor, data, min_tiles, max_tiles)), name
    if HF_COMPOSITES_TRANSPARENCY:  # transformers >= 5.21; before, HF converts plainly as the card does
        assert card.shape != hf.shape or not torch.equal(card, hf)  # the two layouts really differ here


def test_the_cards_rescale_equals_the_normalise_table():
    pixels = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)  # ToTensor
    mean = torch.as_tensor(model_card.IMAGENET_MEAN, dtype=torch.float32)[:, None]
    std = torch.as_tensor(model_card.IMAGENET_STD, dtype=torch.float32)[:, None]
    assert np.array_equal(pixels[None].sub(mean).div(std).numpy(), reference_table())


def test_bad_bytes_raise_the_decode_error():
    with pytest.raises(ImageDecodeError, match="cannot identify"):
        preprocess_card(b"not an image" * 10, ResolvedTiling())
    with pytest.raises(ImageDecodeError, match="too large"):
        preprocess_card(png_bytes(100, 100), ResolvedTiling(), max_pixels=100 * 100 - 1)


def test_the_vision_service_takes_the_layout_from_the_checkpoint(tiny_ckpt, tiny_flash_ckpt):
    hf = VisionCore(VisionConfig(model=str(tiny_ckpt)), tiny_ckpt, "local://x")
    original = VisionCore(VisionConfig(model=str(tiny_flash_ckpt)), tiny_flash_ckpt, "local://x")
    assert (hf._preprocess_fn, original._preprocess_fn) == (preprocess_pixels, preprocess_pixels_card)
    assert (hf.preprocessing, original.preprocessing) == ("hf-processor", "model-card")
