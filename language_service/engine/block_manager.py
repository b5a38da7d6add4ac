"""Which KV blocks belong to which sequence: fixed-size blocks, a block table per sequence.

Bookkeeping only, no tensors. The cache (see `kv_cache.py`) holds `num_blocks` blocks of
`block_size` token slots per layer, allocated once. A sequence holds just the blocks that cover
the positions it has written so far and takes one more when its next token crosses a block
boundary, so a request with a large max_tokens that stops early never held room it did not use.
Any free block serves any sequence: no fragmentation, no contiguity to wait for. Slot `s` of
the cache is position `s % block_size` of block `s // block_size`."""

from __future__ import annotations

from collections import deque

from language_service.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"the KV cache needs at least one block of one slot, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of the blocks held by sequences, 0..1."""
        return self.num_used / self.num_blocks

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def missing(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks `seq` still needs so that its table covers positions [0, num_tokens)."""
        return max(0, self.blocks_for(num_tokens) - len(seq.block_table))

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Extend `seq`'s table to cover [0, num_tokens); False (and nothing taken) if too few are free."""
        need = self.missing(seq, num_tokens)
        if need > len(self._free):
            return False
        seq.block_table.extend(self._free.popleft() for _ in range(need))
        return True

    def free(self, seq: Sequence) -> None:
        """Give every block of `seq` back (finish, abort or preemption)."""
        self._free.extend(seq.block_table)
        seq.block_table = []

    def slot(self, seq: Sequence, position: int) -> int:
        """The cache slot that holds `seq`'s token at `position`."""
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size
