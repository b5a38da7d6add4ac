"""Shared fixtures: seeded random-init checkpoints (written once per session) and images."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Triton kernels (the engine's paged decode) run in Triton's interpreter where there is no CUDA
# device. Triton reads the switch when it is first imported, so it is set before any test imports
# it (importing torch does not import Triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    # Suites that start real processes run last so fast unit failures show first.
    items.sort(key=lambda item: "integration" in str(item.fspath))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return {}


def _checkpoint(name: str, cache: dict, tmp_path_factory) -> Path:
    if name not in cache:
        from tools.checkpoint import make_checkpoint

        cache[name] = make_checkpoint(name, tmp_path_factory.mktemp("ckpt") / name, seed=0)
    return cache[name]


@pytest.fixture(scope="session")
def tiny_ckpt(checkpoints, tmp_path_factory) -> Path:
    return _checkpoint("tiny", checkpoints, tmp_path_factory)


@pytest.fixture(scope="session")
def small_ckpt(checkpoints, tmp_path_factory) -> Path:
    return _checkpoint("small", checkpoints, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_flash_ckpt(checkpoints, tmp_path_factory) -> Path:
    return _checkpoint("tiny-flash", checkpoints, tmp_path_factory)


@pytest.fixture(scope="session")
def small_flash_ckpt(checkpoints, tmp_path_factory) -> Path:
    return _checkpoint("small-flash", checkpoints, tmp_path_factory)


def shapes_png(seed: int, width: int = 896, height: int = 896, num_shapes: int = 40) -> bytes:
    """Seeded coloured rectangles on a coloured ground: tiles that differ from one another (unlike
    solid colour, whose tiles tie in the ViR router's ranking) without being pure noise."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(num_shapes):
        x0, y0 = (int(v) for v in rng.integers(0, width, 2))
        size = rng.integers(20, 300, 2)
        draw.rectangle([x0, y0, x0 + int(size[0]), y0 + int(size[1])], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def video_bytes(num_frames: int = 16, width: int = 64, height: int = 48, codec: str = "mpeg4") -> bytes:
    """A small MP4 made in-process with PyAV: frame i is grey level 15*i with a white bar 4*i wide,
    so every frame differs and its index can be read back from its pixels."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            pixels = np.full((height, width, 3), 15 * i, dtype=np.uint8)
            pixels[:, : 4 * i] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A gradient with seeded noise as a q90 JPEG: photo-like enough for resampling and decoding."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256], -1)
    pixels = np.clip(base + rng.integers(-20, 21, size=(height, width, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bytes(width: int, height: int, seed: int | None = None, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A solid-colour image, or seeded noise when `seed` is given."""
    if seed is None:
        image = Image.new("RGB", (width, height), color)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def redis_server(tmp_path):
    from stack.local_redis import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
