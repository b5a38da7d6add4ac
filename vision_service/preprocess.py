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
  often black); HF composites onto white first since transformers 5.21 (5.0-5.20 convert plainly,
  like the original), and this module follows the installed release (`HF_COMPOSITES_TRANSPARENCY`).
* Rescale: the original divides by 255 in float32 (``ToTensor``), HF multiplies by 1/255 in float64
  and casts; the two agree on all 256 byte values, so this is no difference in practice.

EXIF orientation is not applied, as ``GotOcr2ImageProcessorPil`` does not apply it to a PIL image.

A replica hands the ViT uint8 tiles (`preprocess_pixels`, the CPU's part: decode, resize, tile)
and normalises them on the ViT's device (`vision_service.normalize`), with the same float32
result as `preprocess` bit for bit. A GPU replica also resizes and tiles there
(`vision_service.device_tiling`, Pillow's integer arithmetic in torch), leaving the CPU the decode. `fast_decode` lets libjpeg-turbo decode a large JPEG at
1/2, 1/4 or 1/8 scale (Pillow's ``draft``) when it is at least twice the canvas in both
dimensions; that changes pixels (BENCHMARKS.md, "Vision preprocessing"), so it is off by default.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

import numpy as np
import torch
from PIL import Image

from vision_service.device_tiling import DeviceTiler
from vision_service.normalize import normalize

log = logging.getLogger(__name__)

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
class ImageTiles:
    """The tiles of one image as bytes, before rescaling and normalisation."""

    pixels: torch.Tensor  # [num_tiles, 3, tile_size, tile_size] uint8, RGB planes
    grid: tuple[int, int]  # (cols, rows) of the chosen grid
    num_tiles: int  # cols * rows, + 1 when the thumbnail was added
    original_size: tuple[int, int]  # (width, height)


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
    return _load(_open(data, max_pixels), to_rgb)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read and check the header only; no pixel data is decoded yet."""
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
    return image


def _load(image: Image.Image, to_rgb: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    width, height = image.size
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
    tiles = tile_pixels(image, opts, grid=grid)
    return PreprocessedImage(
        pixel_values=normalize(tiles.pixels),
        grid=tiles.grid,
        num_tiles=tiles.num_tiles,
        original_size=tiles.original_size,
    )


def tile_pixels(
    image: Image.Image,
    opts: ResolvedTiling,
    grid_size: tuple[int, int] | None = None,
    pin_memory: bool = False,
    grid: tuple[int, int] | None = None,
    tiler: DeviceTiler | None = None,
) -> ImageTiles:
    """Resize ``image`` onto the chosen grid (or ``grid``: (cols, rows)), cut it into uint8 tiles,
    add the thumbnail.

    ``grid_size`` is the (width, height) the grid is chosen for, when ``image`` was decoded
    smaller than the file it came from (``fast_decode``); ``pin_memory`` puts the tiles in
    page-locked memory for a non-blocking copy to a CUDA device; ``tiler`` resizes and cuts on
    its device instead (the same bytes, `vision_service.device_tiling`), and the tiles stay there.
    """
    image = _to_rgb(image)
    width, height = grid_size or image.size
    cols, rows = grid or choose_grid(width, height, opts)
    thumbnail = opts.use_thumbnail and cols * rows > 1
    pixels = None
    if tiler is not None:
        try:
            pixels = tiler.tiles(image, (cols, rows), opts.tile_size, thumbnail)
        except torch.OutOfMemoryError:  # a huge image on a full device: this one is resized here
            log.warning("no device memory to tile a %dx%d image; resizing it on the CPU", *image.size)
    if pixels is None:
        pixels = _cpu_tiles(image, (cols, rows), opts.tile_size, thumbnail, pin_memory)
    return ImageTiles(pixels=pixels, grid=(cols, rows), num_tiles=pixels.shape[0], original_size=(width, height))


def _cpu_tiles(image: Image.Image, grid: tuple[int, int], size: int, thumbnail: bool, pin_memory: bool) -> torch.Tensor:
    """Pillow resizes, numpy cuts: [N, 3, T, T] uint8 on the CPU."""
    cols, rows = grid
    num_grid_tiles = cols * rows
    pixels = torch.empty((num_grid_tiles + thumbnail, 3, size, size), dtype=torch.uint8, pin_memory=pin_memory)
    tiles = pixels.numpy()  # [N, 3, T, T], a view: written in place
    canvas = image.resize((cols * size, rows * size), Image.Resampling.BICUBIC)
    _cut(canvas, tiles[:num_grid_tiles].reshape(rows, cols, 3, size, size))
    if thumbnail:
        # The thumbnail is the whole original image, not the grid canvas, squeezed to one tile.
        _cut(image.resize((size, size), Image.Resampling.BICUBIC), tiles[-1:].reshape(1, 1, 3, size, size))
    return pixels


def _cut(image: Image.Image, dest: np.ndarray) -> None:
    """An RGB image [rows * T, cols * T] -> dest [rows, cols, 3, T, T]: tiles left to right, then
    top to bottom, as planes (the device normalises contiguous bytes). Pillow packs each band
    straight out of its RGBX storage (`tobytes("raw", "R")`: one copy, where `split` + `asarray`
    made two and an image per band: the cut ~1.5x faster, the whole of `_cpu_tiles` ~3% lower)."""
    rows, cols, _, size, _ = dest.shape
    for channel, band in enumerate("RGB"):
        plane = np.frombuffer(image.tobytes("raw", band), dtype=np.uint8)  # [rows * T * cols * T]
        dest[:, :, channel] = plane.reshape(rows, size, cols, size).transpose(0, 2, 1, 3)


def preprocess(
    data: bytes, opts: ResolvedTiling, max_pixels: int = DEFAULT_MAX_PIXELS
) -> PreprocessedImage:
    """Image bytes -> model-ready tiles. Raises ImageDecodeError for bad or oversized images."""
    return tile_image(decode_image(data, max_pixels), opts)


def preprocess_pixels(
    data: bytes,
    opts: ResolvedTiling,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fast_decode: bool = False,
    pin_memory: bool = False,
    to_rgb: Callable[[Image.Image], Image.Image] | None = None,
    choose: Callable[[int, int, ResolvedTiling], tuple[int, int]] = choose_grid,
    tiler: DeviceTiler | None = None,
) -> ImageTiles:
    """Image bytes -> uint8 tiles, the CPU's share of `preprocess` (normalise them on the device
    with `vision_service.normalize.normalize`); ``to_rgb`` and ``choose`` (the grid rule) are
    the model cards' in `tiling_card`; with ``tiler`` the CPU only decodes and the tiles are cut
    on the tiler's device. Raises ImageDecodeError for bad or oversized images."""
    image = _open(data, max_pixels)
    original_size = image.size
    grid = choose(*original_size, opts)
    if fast_decode:
        _draft(image, grid, opts.tile_size)
    return tile_pixels(_load(image, to_rgb), opts, original_size, pin_memory, grid, tiler)


def _draft(image: Image.Image, grid: tuple[int, int], tile_size: int) -> None:
    """Let libjpeg-turbo decode a JPEG at 1/2, 1/4 or 1/8 scale, never below the canvas: only
    when the file is at least twice the canvas in both dimensions (PIL picks the scale)."""
    canvas = (grid[0] * tile_size, grid[1] * tile_size)
    if image.format in ("JPEG", "MPO") and min(image.size[0] / canvas[0], image.size[1] / canvas[1]) >= 2:
        image.draft(image.mode, canvas)


def _hf_composites_transparency() -> bool:
    """Whether the installed transformers' ``convert_to_rgb`` composites transparency onto white:
    5.21 and later do; 5.0-5.20 convert plainly (a transparent pixel keeps its hidden colour)."""
    try:
        major, minor = (int(part) for part in metadata.version("transformers").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return True
    return (major, minor) >= (5, 21)


# Read once: the tiles of an HF-native checkpoint equal the installed processor's, whichever rule it has.
HF_COMPOSITES_TRANSPARENCY = _hf_composites_transparency()


def _to_rgb(image: Image.Image) -> Image.Image:
    """HF's ``convert_to_rgb``: composite any transparency onto white (transformers >= 5.21), else
    a plain RGB convert."""
    if HF_COMPOSITES_TRANSPARENCY and ("A" in image.getbands() or image.info.get("transparency") is not None):
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
