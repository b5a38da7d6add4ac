"""Lossy codecs on real model activations (projector outputs of the small and 1b-shape
presets, not random noise), held to the error bounds their number formats guarantee.

Bounds, per element x of a token row with absmax a (scale s = a / qmax):
- int8 (qmax 127, round to nearest): |x - x'| <= s / 2 = a / 254.
- fp8 e4m3 (qmax 448, 3 mantissa bits): |x - x'| <= 2^-4 |x| for normal values, and half the
  subnormal spacing (2^-10 s) below 2^-6 s.
Both then bound the cosine similarity of each token row; we assert the row minimum too."""

from __future__ import annotations

import pytest
import torch

from dvd import codec
from dvd.types import Codec, Compression
from tests.conftest import png_bytes
from vision_service.encoder import TileEncoder
from vision_service.preprocess import ResolvedTiling, preprocess

IMAGES = [png_bytes(896, 448, seed=5), png_bytes(448, 448, color=(240, 240, 230)), png_bytes(600, 900, seed=6)]


def activations(checkpoint) -> torch.Tensor:
    encoder = TileEncoder(str(checkpoint), torch.device("cpu"), torch.float32)
    tiles = torch.cat([preprocess(img, ResolvedTiling(max_tiles=4)).pixel_values for img in IMAGES])
    return encoder.encode(tiles).features  # [tokens, hidden]


def check_lossy(x: torch.Tensor, kind: Codec) -> dict:
    blob = codec.encode(x, kind)
    y = codec.decode(blob, kind, tuple(x.shape))
    err = (y - x).abs()
    absmax = x.abs().amax(dim=1, keepdim=True)
    if kind is Codec.INT8:
        bound = absmax / 254 * (1 + 1e-5)
    else:
        scale = absmax / 448
        bound = torch.maximum(x.abs() * 2**-4, scale * 2**-10) * (1 + 1e-5)
    assert bool((err <= bound).all()), f"{kind}: error bound violated by {(err - bound).max().item()}"
    cosine = torch.nn.functional.cosine_similarity(x, y, dim=1)
    raw = x.numel() * 2  # the bf16 baseline
    return {"bytes_ratio_vs_bf16": len(blob) / raw, "min_cosine": cosine.min().item(),
            "max_rel_error": (err.amax(dim=1) / absmax.squeeze(1)).max().item()}


def assert_quality(x: torch.Tensor) -> None:
    int8 = check_lossy(x, Codec.INT8)
    fp8 = check_lossy(x, Codec.FP8_E4M3)
    # From the bounds: int8 row error <= 1/254 of absmax -> cosine >= 0.999 for any row whose
    # energy is not concentrated in fewer than a handful of elements; fp8 keeps ~1/16 relative.
    assert int8["min_cosine"] > 0.999 and int8["max_rel_error"] <= 1 / 254 + 1e-6
    assert fp8["min_cosine"] > 0.995 and fp8["max_rel_error"] <= 2**-4 + 1e-6
    for stats in (int8, fp8):
        assert stats["bytes_ratio_vs_bf16"] <= 0.52  # one byte a value + one f32 scale per token
    for kind in (Codec.INT8, Codec.FP8_E4M3):
        for compression in (Compression.ZSTD, Compression.LZ4):
            blob = codec.encode(x, kind, compression)
            assert torch.equal(codec.decode(blob, kind, tuple(x.shape), compression),
                               codec.decode(codec.encode(x, kind), kind, tuple(x.shape)))


def test_small_preset_activations(small_ckpt):
    x = activations(small_ckpt)
    assert x.shape[1] == 256 and x.std() > 0.1  # real, non-degenerate activations
    assert_quality(x)


@pytest.mark.slow
def test_1b_shape_activations(tmp_path_factory):
    from tools.checkpoint import make_checkpoint

    checkpoint = make_checkpoint("1b-shape", tmp_path_factory.mktemp("ckpt") / "1b-shape")
    x = activations(checkpoint)
    assert x.shape[1] == 896
    assert_quality(x)
