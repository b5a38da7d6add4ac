"""Hypothesis properties of the embedding codecs: lossless ones round-trip exactly, lossy ones
stay within their error bound, and any bytes handed to decode give a tensor or DataCorrupted."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvd import codec as codecs
from dvd.errors import DataCorrupted
from dvd.types import Codec, Compression

SHAPES = st.tuples(st.integers(1, 6), st.integers(1, 16))


@given(SHAPES, st.integers(0, 2**31 - 1), st.sampled_from(list(Compression)))
@settings(max_examples=100, deadline=None)
def test_fp32_round_trips_exactly(shape, seed, compression):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(codecs.decode(codecs.encode(x, Codec.FP32, compression), Codec.FP32, shape, compression), x)


@pytest.mark.parametrize("codec", [Codec.BF16, Codec.FP16, Codec.INT8, Codec.FP8_E4M3])
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_lossy_codecs_stay_close(codec, shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    y = codecs.decode(codecs.encode(x, codec), codec, shape)
    scale = x.abs().max(dim=1, keepdim=True).values.clamp_min(1e-6)
    assert y.shape == x.shape and ((y - x).abs() / scale).max() < 0.1


@given(st.binary(max_size=512), st.sampled_from(list(Codec)), SHAPES, st.sampled_from(list(Compression)))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_are_data_corrupted(data, codec, shape, compression):
    try:
        out = codecs.decode(data, codec, shape, compression)
    except DataCorrupted:
        return
    assert out.shape == shape
