"""Which KV-arena positions belong to which sequence: contiguous extents, first fit.

Bookkeeping only, no tensors. The arena (see `kv_cache.py`) holds `num_tokens` positions per
layer, allocated once; the scheduler reserves one contiguous extent per admitted sequence for
everything it can ever need (prompt + max_tokens - 1), so a running sequence never runs out of
cache, nothing is ever preempted, and attention reads each sequence's keys as one zero-copy
view. The cost of contiguity is external fragmentation: the head of the queue may wait for a
large enough hole while smaller holes sit free; freeing coalesces neighbours, and an idle engine
always has the whole arena as one hole."""

from __future__ import annotations

import bisect


class ExtentAllocator:
    def __init__(self, num_tokens: int) -> None:
        if num_tokens < 1:
            raise ValueError(f"the KV arena needs at least one position, got {num_tokens}")
        self.num_tokens = num_tokens
        self.num_used = 0
        self._holes: list[tuple[int, int]] = [(0, num_tokens)]  # (start, length), sorted, never adjacent

    @property
    def usage(self) -> float:
        """Reserved fraction of the arena, 0..1."""
        return self.num_used / self.num_tokens

    @property
    def largest_hole(self) -> int:
        return max((length for _, length in self._holes), default=0)

    def allocate(self, length: int) -> int | None:
        """Reserve `length` contiguous positions; returns their start, or None when no hole fits."""
        if length < 1:
            raise ValueError(f"extent length must be positive, got {length}")
        for i, (start, hole) in enumerate(self._holes):
            if hole >= length:
                if hole == length:
                    del self._holes[i]
                else:
                    self._holes[i] = (start + length, hole - length)
                self.num_used += length
                return start
        return None

    def free(self, start: int, length: int) -> None:
        """Return an extent; merges it with the holes on either side."""
        i = bisect.bisect_left(self._holes, (start, 0))
        before = self._holes[i - 1] if i > 0 else None
        after = self._holes[i] if i < len(self._holes) else None
        if (before and before[0] + before[1] > start) or (after and start + length > after[0]):
            raise ValueError(f"extent [{start}, {start + length}) overlaps free space: double free?")
        self.num_used -= length
        if before and before[0] + before[1] == start:
            i -= 1
            start, length = before[0], before[1] + length
            del self._holes[i]
        if after and start + length == after[0]:
            length += after[1]
            del self._holes[i]
        self._holes.insert(i, (start, length))
