"""InternVL dynamic tiling: image bytes -> ImageNet-normalised tiles (+ a thumbnail).

The output is bit-identical to transformers' ``GotOcr2ImageProcessorPil`` configured as the
InternVL3-hf checkpoints configure it (``crop_to_patches=True``, 448x448 tiles, BICUBIC, rescale
1/255, ImageNet mean/std), because the correctness reference is ``InternVLForConditionalGeneration``
fed by that processor; HF-native checkpoints are served with it. Original-layout checkpoints get
the original InternVL ``dynamic_preprocess`` (model cards) instead, ``tiling_card.py``, which
differs from this one in:

* Grid ties between grids with the same tile count: the original sorts a ``set`` of grids by tile
  count, so equal-count grids come in set-iteration order ((4, 1), (1, 4), (2, 2) in CPython); HF
  (and we) keep generation order, cols then rows ((1, 4), (2, 2), (4, 1)). With min_tiles=1 such
  a tie is never the best match (checked for max_tiles <= 40); with a larger min_tiles it can be:
  a 750x300 image at min_tiles=max_tiles=4 gets (4, 1) from the original and (2, 2) from HF.
* Transparency: the original calls ``convert("RGB")`` (transparent pixels keep their hidden colour,
  often black); HF composites onto white first.
* Rescale: the original divides by 255 in float32 (``ToTensor``), HF multiplies by 1/255 in float64
  and casts; the two agree on all 256 byte values, so this is no difference in practice.

EXIF orientation is not applied, as ``GotOcr2ImageProcessorPil`` does not apply it to a PIL image.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_TILES_LIMIT = 40
# 8192 x 8192 RGB is 192 MiB decoded; it also sits below PIL's own bomb threshold (~89.5 MP).
DEFAULT_MAX_PIXELS = 8192 * 8192
# Common web and camera formats only: PIL's other plugins (EPS runs Ghostscript, ...) are attack
# surface we need not expose. Camera JPEGs that PIL reads as MPO come in through the JPEG opener.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")


class ImageDecodeError(ValueError):
    """The image bytes are empty, undecodable, or declare an image larger than allowed."""


@dataclass(frozen=True)
class ResolvedTiling:
    """How one image is cut into tiles; the defaults are InternVL's."""

    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True  # appended only when the grid has more than one tile
    tile_size: int = 448

    def __post_init__(self) -> None:
        if not 1 <= self.min_tiles <= self.max_tiles <= MAX_TILES_LIMIT:
            raise ValueError(
                f"need 1 <= min_tiles <= max_tiles <= {MAX_TILES_LIMIT}, "
                f"got min_tiles={self.min_tiles}, max_tiles={self.max_tiles}"
            )
        if self.tile_size <= 0:
            raise ValueError(f"tile_size must be positive, got {self.tile_size}")


@dataclass(frozen=True)
class PreprocessedImage:
    """The model-ready tiles of one image."""

    pixel_values: torch.Tensor  # [num_tiles, 3, tile_size, tile_size] float32, ImageNet-normalised
    grid: tuple[int, int]  # (cols, rows) of the chosen grid
    num_tiles: int  # cols * rows, + 1 when the thumbnail was added
    original_size: tuple[int, int]  # (width, height)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 to_rgb: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image (transparency composited onto white, unless
    ``to_rgb`` converts it otherwise).

    The declared size is checked against ``max_pixels`` before any pixel data is decoded. PIL's
    own guard (``Image.MAX_IMAGE_PIXELS``, errors above ~179 MP) still applies on top of it.
    Raises ImageDecodeError for empty, undecodable, truncated, or too-large images.
    """
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image is too large: {exc}") from exc
    except Exception as exc:  # PIL raises many exception types on malformed headers
        formats = ", ".join(ALLOWED_FORMATS)
        raise ImageDecodeError(
            f"cannot identify image ({len(data)} bytes; supported: {formats}): {exc}"
        ) from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is too large: {width}x{height} = {width * height} pixels, limit is {max_pixels}"
        )
    try:
        image.load()
        return (to_rgb or _to_rgb)(image)
    except Exception as exc:  # truncated or corrupt pixel data surfaces only here
        raise ImageDecodeError(
            f"cannot decode {image.format} image of {width}x{height}: {exc}"
        ) from exc


def choose_grid(width: int, height: int, opts: ResolvedTiling) -> tuple[int, int]:
    """Pick the (cols, rows) grid whose aspect ratio is closest to width/height.

    An exact tie goes to the later candidate (more tiles) if the image area exceeds half the
    area of that grid's canvas. This is HF's ``get_optimal_tiled_canvas``, candidate order and
    float comparisons included (see the module docstring for where the original InternVL differs).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect_ratio = width / height
    area = width * height
    best_diff = float("inf")
    best_grid = (1, 1)
    for cols, rows in _candidate_grids(opts.min_tiles, opts.max_tiles):
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best_grid = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * opts.tile_size * opts.tile_size * cols * rows:
            best_grid = (cols, rows)
    return best_grid


def tile_image(image: Image.Image, opts: ResolvedTiling, grid: tuple[int, int] | None = None) -> PreprocessedImage:
    """Resize ``image`` onto the chosen grid (or ``grid``: (cols, rows)), cut it into tiles, add
    the thumbnail, normalise."""
    image = _to_rgb(image)
    width, height = image.size
    cols, rows = grid or choose_grid(width, height, opts)
    size = opts.tile_size
    num_grid_tiles = cols * rows
    num_tiles = num_grid_tiles + (1 if opts.use_thumbnail and num_grid_tiles > 1 else 0)

    tiles = np.empty((num_tiles, size, size, 3), dtype=np.uint8)  # [N, T, T, 3]
    canvas = np.asarray(image.resize((cols * size, rows * size), Image.Resampling.BICUBIC))
    # canvas: [rows*T, cols*T, 3] -> tiles in row-major order (left to right, then top to bottom)
    tiles[:num_grid_tiles].reshape(rows, cols, size, size, 3)[...] = canvas.reshape(
        rows, size, cols, size, 3
    ).transpose(0, 2, 1, 3, 4)
    if num_tiles > num_grid_tiles:
        # The thumbnail is the whole original image, not the grid canvas, squeezed to one tile.
        tiles[-1] = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))

    return PreprocessedImage(
        pixel_values=torch.from_numpy(_normalize(tiles)),
        grid=(cols, rows),
        num_tiles=num_tiles,
        original_size=(width, height),
    )


def preprocess(
    data: bytes, opts: ResolvedTiling, max_pixels: int = DEFAULT_MAX_PIXELS
) -> PreprocessedImage:
    """Image bytes -> model-ready tiles. Raises ImageDecodeError for bad or oversized images."""
    return tile_image(decode_image(data, max_pixels), opts)


def _to_rgb(image: Image.Image) -> Image.Image:
    """HF's ``convert_to_rgb``: composite any transparency onto white, else a plain RGB convert."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@lru_cache(maxsize=64)
def _candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Grids with min_tiles <= cols*rows <= max_tiles: by tile count, then cols, then rows."""
    grids = [
        (cols, rows)
        for cols in range(1, max_tiles + 1)
        for rows in range(1, max_tiles + 1)
        if min_tiles <= cols * rows <= max_tiles
    ]
    # sorted() is stable, so grids with the same tile count keep their (cols, rows) order
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


@lru_cache(maxsize=1)
def _normalize_table() -> np.ndarray:
    """[3, 256] float32: the normalised value of every byte, per channel.

    Computed with HF's exact arithmetic (float64 * 1/255, cast to float32, then float32
    (x - mean) / std), so a table lookup reproduces its output bit for bit, about 5x faster.
    """
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)  # [256]
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None]  # [3, 1]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None]  # [3, 1]
    return (scaled[None, :] - mean) / std


def _normalize(tiles: np.ndarray) -> np.ndarray:
    """tiles: [N, T, T, 3] uint8 -> [N, 3, T, T] float32, rescaled and ImageNet-normalised."""
    table = _normalize_table()
    out = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), dtype=np.float32)
    for channel in range(3):
        out[:, channel] = table[channel][tiles[..., channel]]
    return out
