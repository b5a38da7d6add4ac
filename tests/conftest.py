"""Shared fixtures: seeded random-init checkpoints (written once per session) and images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_collection_modifyitems(config, items):
    # Suites that start real processes run last so fast unit failures show first.
    items.sort(key=lambda item: "integration" in str(item.fspath))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return {}


def _checkpoint(name: str, cache: dict, tmp_path_factory) -> Path:
    if name not in cache:
        from dvd.checkpoint import make_checkpoint

        cache[name] = make_checkpoint(name, tmp_path_factory.mktemp("ckpt") / name, seed=0)
    return cache[name]


@pytest.fixture(scope="session")
def tiny_ckpt(checkpoints, tmp_path_factory) -> Path:
    return _checkpoint("tiny", checkpoints, tmp_path_factory)


@pytest.fixture(scope="session")
def small_ckpt(checkpoints, tmp_path_factory) -> Path:
    return _checkpoint("small", checkpoints, tmp_path_factory)


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
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
