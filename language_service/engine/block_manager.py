"""Which KV blocks belong to which sequence: fixed-size blocks, a block table per sequence, and
the prefix cache that lets sequences share the blocks of a common prefix.

Bookkeeping only, no tensors. The cache (see `kv_cache.py`) holds `num_blocks` blocks of
`block_size` token slots per layer, allocated once. A sequence holds just the blocks that cover
the positions it has written so far and takes one more when its next token crosses a block
boundary, so a request with a large max_tokens that stops early never held room it did not use.
Any free block serves any sequence: no fragmentation, no contiguity to wait for. Slot `s` of
the cache is position `s % block_size` of block `s // block_size`.

Prefix caching (on unless batch-invariant): a block whose every slot is written is registered
under its content hash (`Sequence.block_hash`: the tokens of it and of every block before it,
and the image features once the prefix reaches an image), and stays readable after its
sequences let go of it. A new sequence whose first blocks hash the same takes them as they are
(reference-counted, never written again: a sequence writes only past its cached positions, and
a shared block is full) and prefills only the rest. Released cached blocks are evicted least
recently released first, and only when no plain free block is left: they count as free room."""

from __future__ import annotations

from collections import OrderedDict, deque

from language_service.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"the KV cache needs at least one block of one slot, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free: deque[int] = deque(range(num_blocks))  # blocks holding nothing reusable
        self._refs = [0] * num_blocks  # sequences holding each block
        self._hash_of: dict[int, bytes] = {}  # registered block -> its content hash
        self._block_of: dict[bytes, int] = {}  # content hash -> the block holding it
        self._evictable: OrderedDict[int, None] = OrderedDict()  # released registered blocks, oldest first
        self.hit_tokens = 0  # prompt positions served from the prefix cache, since start
        self.queried_tokens = 0  # prompt positions looked up

    @property
    def num_free(self) -> int:
        """Blocks a sequence can take now: plain free ones and released cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Registered blocks, held or released: the prefix cache's size."""
        return len(self._block_of)

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
        if need > self.num_free:
            return False
        seq.block_table.extend(self._take() for _ in range(need))
        return True

    def admit(self, seq: Sequence, num_tokens: int, reserve: int = 0) -> bool:
        """Give a sequence that holds nothing the blocks for positions [0, num_tokens): its cached
        prefix first (at most up to the last position, which must run to be sampled), then new
        blocks; its cached positions are skipped by prefill. False (nothing taken) unless `reserve`
        blocks stay free after it."""
        hits = self._lookup(seq, num_tokens) if self.prefix_caching else []
        reused = sum(1 for b in hits if self._refs[b] == 0)  # taking these uses up free room too
        if self.blocks_for(num_tokens) - len(hits) + reused + reserve > self.num_free:
            return False
        for block in hits:
            self._evictable.pop(block, None)
            self._refs[block] += 1
        seq.block_table, seq.num_committed_blocks = hits, len(hits)
        seq.num_cached_tokens = len(hits) * self.block_size
        if self.prefix_caching:
            self.queried_tokens += num_tokens
            self.hit_tokens += seq.num_cached_tokens
        return self.grow(seq, num_tokens)

    def commit(self, seq: Sequence) -> None:
        """Register `seq`'s blocks that are now full (every slot written) in the prefix cache."""
        if not self.prefix_caching:
            return
        full = min(seq.num_cached_tokens // self.block_size, len(seq.block_table))
        for index in range(seq.num_committed_blocks, full):
            key, block = seq.block_hash(index, self.block_size), seq.block_table[index]
            if key not in self._block_of and block not in self._hash_of:  # a twin computed meanwhile stays private
                self._block_of[key], self._hash_of[block] = block, key
        seq.num_committed_blocks = max(seq.num_committed_blocks, full)

    def free(self, seq: Sequence) -> None:
        """Give every block of `seq` back (finish, abort or preemption). Registered blocks stay
        cached until evicted, the deepest released first."""
        for block in reversed(seq.block_table):
            self._refs[block] -= 1
            if self._refs[block]:
                continue
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)
        seq.block_table = []
        seq.num_committed_blocks = 0

    def clear_cache(self) -> None:
        """Forget every cached prefix (held blocks stay with their sequences, unshared from now)."""
        self._free.extend(self._evictable)
        self._evictable.clear()
        self._block_of.clear()
        self._hash_of.clear()

    def slot(self, seq: Sequence, position: int) -> int:
        """The cache slot that holds `seq`'s token at `position`."""
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _lookup(self, seq: Sequence, num_tokens: int) -> list[int]:
        """The cached blocks that hold `seq`'s first positions, in order (references not taken)."""
        hits = []
        for index in range((num_tokens - 1) // self.block_size):
            block = self._block_of.get(seq.block_hash(index, self.block_size))
            if block is None:
                break
            hits.append(block)
        return hits

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:  # evict the least recently released cached block
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
        self._refs[block] = 1
        return block
