"""InternVL tiling must equal transformers' GotOcr2ImageProcessorPil (InternVL3-hf setup), bit for bit."""

from __future__ import annotations

import dataclasses
import inspect
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

from vision_service import preprocess as preprocess_module
from vision_service.preprocess import (
    ImageDecodeError,
    ResolvedTiling,
    choose_grid,
    decode_image,
    preprocess,
    tile_image,
)

SETTINGS = [(1, 1), (1, 6), (1, 12), (2, 4)]  # (min_tiles, max_tiles)
SIZES = [(10, 10), (448, 448), (896, 448), (1344, 896), (300, 2000), (1000, 333)]  # (width, height)


@pytest.fixture(scope="module")
def hf_processor() -> GotOcr2ImageProcessorPil:
    """The processor as InternVL3-1B-hf's preprocessor_config.json sets it up."""
    return GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448},
        resample=Image.Resampling.BICUBIC,
        image_mean=[0.485, 0.456, 0.406],  # written out, not imported: the reference must not
        image_std=[0.229, 0.224, 0.225],  # follow a typo in the code under test
        rescale_factor=1 / 255,
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
    )


def hf_pixel_values(processor, data: bytes, min_tiles: int, max_tiles: int) -> torch.Tensor:
    # The raw decoded image, as a user would hand it to the processor: HF does the RGB conversion.
    image = Image.open(io.BytesIO(data))
    out = processor(
        images=image, crop_to_patches=True, min_patches=min_tiles, max_patches=max_tiles, return_tensors="pt"
    )
    return out["pixel_values"]  # [N, 3, 448, 448]


def rgb_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Gradients plus noise: smooth and sharp detail, so any resampling mismatch shows."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], -1)
    noise = rng.integers(-40, 41, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)  # [H, W, 3]


def encode(image: Image.Image, fmt: str = "PNG", **save_kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    return encode(Image.fromarray(rgb_array(width, height, seed)))


def mode_images() -> dict[str, bytes]:
    """One image per input flavour the decoder must turn into RGB the way HF does."""
    rgb = Image.fromarray(rgb_array(700, 500, seed=1))
    alpha = Image.fromarray(rgb_array(700, 500, seed=2)[..., 0])
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    palette = rgb.quantize(colors=64)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 3
    return {
        "rgba": encode(rgba),
        "palette": encode(palette),
        "palette_transparent": encode(palette_transparent, transparency=3),
        "grayscale": encode(rgb.convert("L")),
        "grayscale_alpha": encode(rgba.convert("LA")),
        "jpeg": encode(rgb, "JPEG", quality=90),
        "jpeg_cmyk": encode(rgb.convert("CMYK"), "JPEG", quality=90),
        "grayscale_16bit": encode(Image.fromarray(rgb_array(700, 500, seed=3)[..., 0].astype(np.uint16) * 257)),
        "gif": encode(palette, "GIF"),
        "webp": encode(rgb, "WEBP", quality=80),
    }


@pytest.mark.parametrize("min_tiles,max_tiles", SETTINGS)
@pytest.mark.parametrize("width,height", SIZES)
def test_matches_hf_across_sizes(hf_processor, width, height, min_tiles, max_tiles):
    data = png_bytes(width, height)
    got = preprocess(data, ResolvedTiling(min_tiles=min_tiles, max_tiles=max_tiles))
    expected = hf_pixel_values(hf_processor, data, min_tiles, max_tiles)
    assert got.pixel_values.dtype == torch.float32
    assert got.pixel_values.shape == expected.shape
    assert torch.equal(got.pixel_values, expected)
    assert got.num_tiles == expected.shape[0]
    assert got.original_size == (width, height)


@pytest.mark.parametrize("min_tiles,max_tiles", [(1, 12), (2, 4)])
@pytest.mark.parametrize("name,data", mode_images().items())
def test_matches_hf_across_modes(hf_processor, name, data, min_tiles, max_tiles):
    got = preprocess(data, ResolvedTiling(min_tiles=min_tiles, max_tiles=max_tiles))
    assert torch.equal(got.pixel_values, hf_pixel_values(hf_processor, data, min_tiles, max_tiles)), name


@pytest.mark.parametrize("composites,expected", [(True, (255, 255, 255)), (False, (0, 0, 0))])
def test_transparency_follows_the_installed_transformers(monkeypatch, composites, expected):
    # A fully transparent black image: transformers >= 5.21 (and we, there) see white; 5.0-5.20's
    # plain convert("RGB") (and we, there) see black.
    monkeypatch.setattr(preprocess_module, "HF_COMPOSITES_TRANSPARENCY", composites)
    data = encode(Image.new("RGBA", (32, 32), (0, 0, 0, 0)))
    assert decode_image(data).getpixel((5, 5)) == expected


def test_transparency_rule_is_the_installed_transformers_rule(monkeypatch):
    from transformers.image_transforms import convert_to_rgb

    # what the installed release does to a transparent black pixel (5.24 warns unless asked for numpy)
    kwargs = {"return_numpy": True} if "return_numpy" in inspect.signature(convert_to_rgb).parameters else {}
    seen = np.asarray(convert_to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0)), **kwargs))[0, 0].tolist()
    assert seen == ([255, 255, 255] if preprocess_module.HF_COMPOSITES_TRANSPARENCY else [0, 0, 0])
    for version, composites in [("5.0.0", False), ("5.20.1", False), ("5.21.0", True), ("5.24.0", True), ("6.1", True)]:
        monkeypatch.setattr(preprocess_module.metadata, "version", lambda _name, v=version: v)
        assert preprocess_module._hf_composites_transparency() is composites, version


def test_exif_orientation_is_not_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(rgb_array(600, 300)), "JPEG", exif=exif.tobytes())
    result = preprocess(data, ResolvedTiling())
    assert result.original_size == (600, 300)
    assert result.grid == (2, 1)


@pytest.mark.parametrize("min_tiles,max_tiles", [(1, 1), (1, 4), (1, 12), (2, 4), (4, 4), (3, 9), (1, 40)])
def test_choose_grid_matches_hf_tiling_rule(min_tiles, max_tiles):
    opts = ResolvedTiling(min_tiles=min_tiles, max_tiles=max_tiles)
    widths = list(range(1, 3000, 37)) + [448, 896, 1344, 1792]
    heights = list(range(1, 3000, 53)) + [448, 896, 1344]
    for width in widths:
        for height in heights:
            expected = get_optimal_tiled_canvas((height, width), (448, 448), min_tiles, max_tiles)
            assert choose_grid(width, height, opts) == expected, (width, height)


@pytest.mark.parametrize(
    "width,height,min_tiles,max_tiles,grid,num_tiles",
    [
        (10, 10, 1, 12, (1, 1), 1),  # upscaled to one tile, no thumbnail for a single tile
        (448, 448, 1, 12, (1, 1), 1),
        (896, 448, 1, 12, (2, 1), 3),
        (1344, 896, 1, 12, (3, 2), 7),
        (300, 2000, 1, 12, (1, 7), 8),
        (1000, 333, 1, 12, (3, 1), 4),  # (6, 2) ties on ratio but the image is too small for it
        (896, 896, 1, 12, (2, 2), 5),  # tie (1,1)/(2,2)/(3,3): area > half of 2x2 canvas, not of 3x3
        (1500, 1500, 1, 12, (3, 3), 10),  # area > half of the 3x3 canvas: the tie goes to 3x3
        (750, 300, 4, 4, (2, 2), 5),  # equal-count tie: HF order, original InternVL gives (4, 1)
        (448, 448, 2, 4, (2, 2), 5),  # min_tiles forces tiling of a one-tile image
        (1344, 896, 1, 1, (1, 1), 1),
    ],
)
def test_grid_and_tile_count(width, height, min_tiles, max_tiles, grid, num_tiles):
    result = tile_image(Image.new("RGB", (width, height)), ResolvedTiling(min_tiles, max_tiles))
    assert result.grid == grid
    assert result.num_tiles == num_tiles
    assert result.pixel_values.shape == (num_tiles, 3, 448, 448)


def test_without_thumbnail_drops_only_the_last_tile(hf_processor):
    data = png_bytes(1344, 896)
    result = preprocess(data, ResolvedTiling(use_thumbnail=False))
    assert (result.grid, result.num_tiles) == ((3, 2), 6)
    assert torch.equal(result.pixel_values, hf_pixel_values(hf_processor, data, 1, 12)[:-1])


def test_tile_size_is_configurable(hf_processor):
    data = png_bytes(640, 320)
    result = preprocess(data, ResolvedTiling(tile_size=224))
    # 640x320 covers more than half a 4x2 canvas of 224px tiles, so the (2,1)/(4,2) tie goes to 4x2.
    assert (result.grid, result.num_tiles) == ((4, 2), 9)
    expected = hf_processor(
        images=Image.open(io.BytesIO(data)), size={"height": 224, "width": 224}, return_tensors="pt"
    )["pixel_values"]
    assert torch.equal(result.pixel_values, expected)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty"),
        (b"definitely not an image" * 10, "cannot identify"),
        (png_bytes(64, 64)[:200], "cannot decode"),  # truncated pixel data
        (png_header_only(100_000, 100_000), "too large"),  # caught by PIL's own bomb guard
        (png_header_only(9_000, 9_000), "too large"),  # 81 MP: under PIL's guard, over ours
        (encode(Image.new("RGB", (8, 8)), "PPM"), "cannot identify"),  # valid, but not an allowed format
    ],
)
def test_bad_input_raises_decode_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        preprocess(data, ResolvedTiling())


def test_max_pixels_is_enforced_before_decoding():
    data = png_bytes(100, 100)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data, max_pixels=100 * 100 - 1)
    assert decode_image(data, max_pixels=100 * 100).size == (100, 100)


def test_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_tiles": 0},
        {"min_tiles": 5, "max_tiles": 4},
        {"max_tiles": 41},
        {"min_tiles": 41, "max_tiles": 41},
        {"tile_size": 0},
        {"tile_size": -448},
    ],
)
def test_invalid_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ResolvedTiling(**kwargs)


def test_options_are_frozen_and_default_to_internvl():
    opts = ResolvedTiling()
    assert (opts.min_tiles, opts.max_tiles, opts.use_thumbnail, opts.tile_size) == (1, 12, True, 448)
    assert ResolvedTiling(min_tiles=40, max_tiles=40).max_tiles == 40
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_tiles = 6  # type: ignore[misc]
