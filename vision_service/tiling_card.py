"""The InternVL model cards' ``load_image`` / ``dynamic_preprocess``: the preprocessing of
original-layout (``InternVLChatModel``) checkpoints, which the published ``model.chat`` is fed by.

It differs from transformers' processor (``preprocess.py``, HF-native checkpoints) in two places
only, both reproduced here as the cards' code behaves:

* Grid ties between grids with the same tile count: the card sorts a ``set`` of grids by tile
  count, so equal-count grids come in the set's iteration order ((4, 1), (1, 4), (2, 2) for four
  tiles in CPython); the set is built here by the card's own expression, so the order is the
  card's. A 750x300 image at min_tiles = max_tiles = 4 gets (4, 1) here and (2, 2) from HF.
* Transparency: the card calls ``Image.open(f).convert("RGB")``, which drops the alpha channel and
  keeps the colour stored under it; HF composites onto white first (transformers >= 5.21).

Everything else is the same arithmetic as ``preprocess.tile_image``: PIL BICUBIC (the default of
``Image.resize`` for RGB, and torchvision's ``Resize`` on a PIL image, a no-op on a 448px tile),
tiles row-major, the thumbnail (the whole image squeezed to one tile) only after a grid of more
than one tile, and ``ToTensor`` + ImageNet ``Normalize`` (float32 x / 255, then (x - mean) / std),
which equals the HF table's rescale on all 256 byte values (checked in the tests).
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image

from vision_service.device_tiling import DeviceTiler
from vision_service.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageTiles,
    PreprocessedImage,
    ResolvedTiling,
    decode_image,
    preprocess_pixels,
    tile_image,
)

NAME = "model-card"  # what the vision service reports and mixes into its cache namespace


def card_rgb(image: Image.Image) -> Image.Image:
    """The cards' ``convert('RGB')``: alpha dropped, the colour under it kept."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    rgb = image.convert("RGB")  # a new image (a copy when already RGB)
    # convert() leaves a palette's transparent colour in info; the cards never look at it again,
    # but tile_image's HF-style conversion would composite that colour onto white.
    rgb.info.pop("transparency", None)
    return rgb


@lru_cache(maxsize=64)
def target_ratios(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """The cards' candidate grids, in the cards' order (the same set expression, sorted the same way)."""
    ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num
    )
    return tuple(sorted(ratios, key=lambda x: x[0] * x[1]))


def choose_grid_card(width: int, height: int, opts: ResolvedTiling) -> tuple[int, int]:
    """The cards' ``find_closest_aspect_ratio``: (cols, rows) closest to width/height; an exact tie
    goes to the later grid when the image covers more than half of that grid's canvas."""
    aspect_ratio = width / height
    area = width * height
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    for ratio in target_ratios(opts.min_tiles, opts.max_tiles):
        ratio_diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if ratio_diff < best_ratio_diff:
            best_ratio_diff, best_ratio = ratio_diff, ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * opts.tile_size * opts.tile_size * ratio[0] * ratio[1]:
            best_ratio = ratio
    return best_ratio


def tile_image_card(image: Image.Image, opts: ResolvedTiling) -> PreprocessedImage:
    """``dynamic_preprocess`` + the cards' transform of an already decoded image."""
    image = card_rgb(image)
    return tile_image(image, opts, grid=choose_grid_card(*image.size, opts))


def preprocess_card(data: bytes, opts: ResolvedTiling, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreprocessedImage:
    """Image bytes -> model-ready tiles, as the cards' ``load_image``. Raises ImageDecodeError
    (through ``decode_image``'s checks) for bad or oversized images."""
    return tile_image_card(decode_image(data, max_pixels, to_rgb=card_rgb), opts)


def preprocess_pixels_card(data: bytes, opts: ResolvedTiling, max_pixels: int = DEFAULT_MAX_PIXELS,
                           fast_decode: bool = False, pin_memory: bool = False,
                           tiler: DeviceTiler | None = None) -> ImageTiles:
    """Image bytes -> uint8 tiles as the cards cut them (the device normalises, as ``ToTensor`` +
    ``Normalize`` would): `preprocess_card` without the normalisation."""
    return preprocess_pixels(data, opts, max_pixels, fast_decode, pin_memory, to_rgb=card_rgb, choose=choose_grid_card,
                             tiler=tiler)
