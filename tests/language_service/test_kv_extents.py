"""The KV extent allocator: first fit, coalescing frees, exact usage accounting."""

from __future__ import annotations

import pytest

from language_service.engine.kv_extents import ExtentAllocator


def test_first_fit_and_coalescing():
    kv = ExtentAllocator(100)
    a, b, c = kv.allocate(30), kv.allocate(30), kv.allocate(30)
    assert (a, b, c) == (0, 30, 60) and kv.num_used == 90
    assert kv.allocate(20) is None  # 10 left
    kv.free(a, 30)
    kv.free(c, 30)
    assert kv.largest_hole == 40  # [60, 100) merged with the tail; [0, 30) apart
    assert kv.allocate(35) == 60
    kv.free(b, 30)
    assert kv.largest_hole == 60  # [0, 60) merged
    kv.free(60, 35)
    assert kv.num_used == 0 and kv.largest_hole == 100 and kv.usage == 0


def test_fragmentation_makes_a_large_extent_wait():
    kv = ExtentAllocator(100)
    starts = [kv.allocate(20) for _ in range(5)]
    kv.free(starts[1], 20)
    kv.free(starts[3], 20)
    assert kv.usage == pytest.approx(0.6)
    assert kv.allocate(40) is None  # 40 free, but not contiguous
    kv.free(starts[2], 20)
    assert kv.allocate(40) == 20


def test_double_free_is_caught():
    kv = ExtentAllocator(10)
    start = kv.allocate(4)
    kv.free(start, 4)
    with pytest.raises(ValueError):
        kv.free(start, 4)
