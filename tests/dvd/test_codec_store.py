"""Raw codecs are bit-exact; the store evicts by size and TTL."""

from __future__ import annotations

import pytest
import torch

from dvd import codec
from dvd.errors import DataCorrupted
from dvd.store import MemoryStore
from dvd.types import Codec, Compression, EmbeddingRef


@pytest.mark.parametrize("kind", [Codec.FP32, Codec.BF16, Codec.FP16])
@pytest.mark.parametrize("compression", list(Compression))
def test_raw_codecs_round_trip_bit_exact(kind, compression):
    x = torch.randn(300, 64) * 3
    dtype = {Codec.FP32: torch.float32, Codec.BF16: torch.bfloat16, Codec.FP16: torch.float16}[kind]
    blob = codec.encode(x, kind, compression)
    out = codec.decode(blob, kind, (300, 64), compression, dtype=dtype)
    assert torch.equal(out, x.to(dtype))
    if compression is Compression.NONE:
        assert len(blob) == 300 * codec.bytes_per_token(kind, 64)


def test_wrong_shape_is_data_corruption():
    blob = codec.encode(torch.randn(4, 8), Codec.FP32)
    with pytest.raises(DataCorrupted):
        codec.decode(blob, Codec.FP32, (5, 8))
    with pytest.raises(DataCorrupted):
        codec.decode(b"garbage", Codec.FP32, (4, 8), Compression.ZSTD)


def _ref(key: str, n: int) -> EmbeddingRef:
    return EmbeddingRef(key, "grpc://x", (n,), Codec.FP32, (n, 1), 4 * n, "", "m")


def test_store_evicts_least_recently_used_past_the_cap():
    store = MemoryStore(max_bytes=100, ttl_s=60)
    store.put(_ref("a", 10), b"a" * 40)
    store.put(_ref("b", 10), b"b" * 40)
    assert store.get("a") is not None  # a is now the most recent
    store.put(_ref("c", 10), b"c" * 40)
    assert store.get("b") is None and store.get("a") and store.get("c")
    assert store.num_bytes == 80 and store.evictions == 1
    assert not store.put(_ref("huge", 1), b"x" * 101)


def test_store_expires_by_ttl():
    now = [0.0]
    store = MemoryStore(max_bytes=100, ttl_s=10, clock=lambda: now[0])
    store.put(_ref("a", 1), b"a")
    now[0] = 9.9
    assert store.get("a") is not None
    now[0] = 10.1
    assert store.get("a") is None and len(store) == 0 and store.num_bytes == 0


def test_live_bytes_drops_expired_entries():
    now = [0.0]
    store = MemoryStore(max_bytes=1000, ttl_s=10, clock=lambda: now[0])
    store.put(_ref("a", 100), b"x" * 100)
    now[0] = 5.0
    store.put(_ref("b", 50), b"y" * 50)
    assert store.live_bytes() == 150
    now[0] = 12.0  # "a" expired, "b" not yet
    assert store.live_bytes() == 50 and len(store) == 1
