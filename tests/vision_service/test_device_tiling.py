"""Resizing and tiling on the ViT's device: the same tiles as the CPU path, byte for byte, for
both preprocessings (HF processor, model cards), every tiling option and reduced-size decoding;
chosen only where asked and exact; a device out of memory falls back to the CPU for that image.
The service's modules are imported inside the tests that need them, so the CUDA cases run on a
bare GPU machine (scripts/gpu_check_vision.sh) with only torch, numpy and Pillow."""

from __future__ import annotations

import asyncio

import pytest
import torch

from dvd.config import DeviceConfig, VisionConfig
from tests.conftest import jpeg, png_bytes, shapes_png
from vision_service.device_tiling import DeviceTiler, device_tiler
from vision_service.preprocess import ResolvedTiling, preprocess_pixels
from vision_service.preprocess_pool import PreprocessPool
from vision_service.tiling_card import preprocess_pixels_card

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
TILINGS = [ResolvedTiling(), ResolvedTiling(max_tiles=4), ResolvedTiling(use_thumbnail=False),
           ResolvedTiling(min_tiles=2, max_tiles=6), ResolvedTiling(max_tiles=1)]
IMAGES = [jpeg(1344, 896), jpeg(451, 300, 1), jpeg(300, 1200, 2), shapes_png(3, 700, 500), png_bytes(97, 61, seed=4)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preprocess", [preprocess_pixels, preprocess_pixels_card], ids=["hf", "card"])
def test_device_tiles_equal_the_cpu_tiles(device, preprocess):
    tiler = DeviceTiler(torch.device(device))
    assert tiler.exact
    for data in IMAGES:
        for opts in TILINGS:
            cpu = preprocess(data, opts)
            dev = preprocess(data, opts, tiler=tiler)
            assert dev.pixels.device.type == device and dev.pixels.dtype == torch.uint8
            assert (dev.grid, dev.num_tiles, dev.original_size) == (cpu.grid, cpu.num_tiles, cpu.original_size)
            assert torch.equal(dev.pixels.cpu(), cpu.pixels), (len(data), opts)


def test_device_tiles_follow_reduced_size_decoding():
    data = jpeg(3000, 2000, 5)  # >= 2x the canvas: decoded at reduced size
    tiler = DeviceTiler(torch.device("cpu"))
    cpu = preprocess_pixels(data, ResolvedTiling(), fast_decode=True)
    dev = preprocess_pixels(data, ResolvedTiling(), fast_decode=True, tiler=tiler)
    assert torch.equal(dev.pixels, cpu.pixels) and dev.original_size == (3000, 2000)


def test_the_device_tiles_only_where_asked_and_exact(monkeypatch):
    from vision_service.__main__ import parse_config

    cpu = torch.device("cpu")
    assert device_tiler("auto", cpu) is None  # Pillow's C is faster on a CPU device
    assert device_tiler("off", cpu) is None
    assert isinstance(device_tiler("on", cpu), DeviceTiler)
    monkeypatch.setattr(DeviceTiler, "_matches_pillow", lambda self: False)  # a Pillow that changed its arithmetic
    assert device_tiler("on", cpu) is None
    assert parse_config(["--model", "m", "--resize-on-device", "on"]).resize_on_device == "on"
    assert VisionConfig(model="m").resize_on_device == "auto"
    with pytest.raises(ValueError, match="resize_on_device"):
        VisionConfig(model="m", resize_on_device="gpu")


def test_a_device_out_of_memory_tiles_that_image_on_the_cpu(monkeypatch):
    tiler = DeviceTiler(torch.device("cpu"))

    def full(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(tiler, "tiles", full)
    data = jpeg(1344, 896)
    assert torch.equal(preprocess_pixels(data, ResolvedTiling(), tiler=tiler).pixels,
                       preprocess_pixels(data, ResolvedTiling()).pixels)


async def test_pool_hands_the_tiler_to_its_workers():
    pool = PreprocessPool(preprocess_pixels, 2, 64 * 1024 * 1024, tiler=DeviceTiler(torch.device("cpu")))
    try:
        data = jpeg(896, 896, 3)
        tiles = await pool.run(data, ResolvedTiling())
        assert torch.equal(tiles.pixels, preprocess_pixels(data, ResolvedTiling()).pixels)
    finally:
        pool.close()


@pytest.mark.parametrize("ckpt_name", ["tiny_ckpt", "tiny_flash_ckpt"])
def test_a_replica_that_tiles_on_its_device_stores_the_same_embeddings(ckpt_name, request):
    from dvd.types import TilingOptions, VirOptions
    from vision_service.core import VisionCore

    ckpt = request.getfixturevalue(ckpt_name)
    blobs = []
    for setting in ("off", "on"):
        cfg = VisionConfig(model=str(ckpt), device=DeviceConfig(device="cpu", dtype="float32"), resize_on_device=setting,
                           metrics_port=0)
        core = VisionCore(cfg, ckpt, "local://x")
        core.load()
        assert (core.preprocess_pool.tiler is not None) == (setting == "on")

        async def encode() -> bytes:
            core.start()
            try:
                result = await core.encode(shapes_png(11, 900, 600), TilingOptions(max_tiles=4), VirOptions(), None, "")
                return core.store.get(result.ref.key)[1]
            finally:
                await core.stop()

        blobs.append(asyncio.run(encode()))
    assert blobs[0] == blobs[1]


def test_dvd_serve_passes_the_resize_setting_to_its_vision_replicas():
    from tools.cli import _vision_args, build_parser

    args = build_parser().parse_args(["serve", "--resize-on-device", "on"])
    assert _vision_args(args)[-2:] == ["--resize-on-device", "on"]
    assert "--resize-on-device" not in _vision_args(build_parser().parse_args(["serve"]))
