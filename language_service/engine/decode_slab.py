"""Decode attention without a per-step gather (CPU fast path).

`BatchedPlan` gathers every row's whole K/V from the block tables at every layer of every step:
O(rows x keys) copying per step, at 64 rows about as much time as the attention itself on one CPU
core (BENCHMARKS.md). A `DecodeSlab` keeps the decoding rows' keys in a padded, contiguous
`[rows, keys_cap]` working copy across steps instead: a step appends one token per row (a copy of
what `PagedKVCache.update` just wrote), and a row is (re)gathered from the paged cache only when
it joins the decode batch, moves to another row, or was recomputed since. The paged cache stays
the source of truth (admission, preemption and capacity are unchanged); the slab is bounded by
the paged cache's own size and is skipped (gather per step instead) for batches that would not fit.

Row `i` of the batch is slab row `i`; the longest prefix of rows whose sequence and length carried
over from the previous step is kept, the rest are gathered. Rows join at the end (admission order),
so a growing batch gathers only its newcomers; a finished row in the middle re-gathers the rows
after it. The attention call (`SlabPlan`) is the same kernel call, on the same shapes and values,
as `BatchedPlan`'s: one per layer for the whole batch, outputs unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from language_service.engine.kv_cache import PagedKVCache
from language_service.engine.plans import ForwardInputs, Planner
from language_service.engine.sequence import Sequence

KEY_HEADROOM = 128  # keys allocated past the longest row when the slab grows: rare reallocations


@dataclass(frozen=True)
class SlabPlan:
    """Decode over the slab: this step's token is copied into it, then one kernel call per layer."""

    store: torch.Tensor  # [layers, 2, rows_cap, keys_cap, kv_heads, D]
    num_rows: int
    num_keys: int
    cache_writes: torch.Tensor  # [rows] paged-cache slot of each row's new token
    slab_writes: torch.Tensor  # [rows] flat slab position (row * keys_cap + position) of the same token
    mask: torch.Tensor | None  # [rows, 1, 1, num_keys] bool; None: every row has every key
    kernel: Callable

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float,
               layer_idx: int) -> torch.Tensor:
        """query [rows, heads, 1, D]; keys/values: the layer's paged cache [slots, kv_heads, D]."""
        out = []
        for store, cache in zip(self.store[layer_idx], (keys, values)):  # K then V: [rows_cap, keys_cap, kvh, D]
            store.view(-1, *cache.shape[1:]).index_copy_(0, self.slab_writes, cache.index_select(0, self.cache_writes))
            out.append(store[: self.num_rows, : self.num_keys].transpose(1, 2))  # [R, kv_heads, S, D] view
        return self.kernel(query, out[0], out[1], self.mask, False, scaling).transpose(1, 2)  # [R, 1, heads, D]


class DecodeSlab:
    def __init__(self, kv: PagedKVCache, planner: Planner) -> None:
        self.kv, self.planner = kv, planner
        self.store: torch.Tensor | None = None  # [layers, 2, rows_cap, keys_cap, kv_heads, D]
        self.rows: list[tuple[Sequence, int]] = []  # (sequence, its preemption count) per slab row
        self.lengths: list[int] = []  # keys held per slab row

    def decode(self, seqs: list[Sequence]) -> ForwardInputs | None:
        """Inputs of one decode step over the slab; None when the batch would not fit in the budget."""
        positions = [s.num_cached_tokens for s in seqs]
        num_keys = max(positions) + 1
        kept = self._kept(seqs, positions) if self._reserve(len(seqs), num_keys) else 0
        if kept < len(seqs) and self.store is None:
            return None
        if kept < len(seqs):
            self._fill(seqs[kept:], kept)
        self.rows, self.lengths = [(s, s.num_preemptions) for s in seqs], [p + 1 for p in positions]
        bs, keys_cap = self.kv.block_size, self.store.shape[3]
        pos = self.planner.tensor(positions)  # [R]
        cache_writes = self.planner.tensor([s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, positions)])
        slab_writes = torch.arange(len(seqs), device=pos.device) * keys_cap + pos
        mask = None
        if min(positions) + 1 < num_keys:  # rows of different lengths: hide each row's padding keys
            mask = (torch.arange(num_keys, device=pos.device)[None] <= pos[:, None])[:, None, None]  # [R, 1, 1, S]
        plan = SlabPlan(self.store, len(seqs), num_keys, cache_writes, slab_writes, mask, self.planner.kernel)
        return ForwardInputs(pos[:, None], cache_writes, plan)

    def _kept(self, seqs: list[Sequence], positions: list[int]) -> int:
        """Leading rows whose slab row already holds exactly their cached keys."""
        kept = 0
        for (seq, preemptions), length, new, pos in zip(self.rows, self.lengths, seqs, positions):
            if seq is not new or preemptions != new.num_preemptions or length != pos:
                break
            kept += 1
        return kept

    def _reserve(self, num_rows: int, num_keys: int) -> bool:
        """Makes room for the batch; False when the slab was (re)allocated, or dropped because the
        batch would need more than the paged cache's own size (then `store` is None)."""
        if self.store is not None and num_rows <= self.store.shape[2] and num_keys <= self.store.shape[3]:
            return True
        rows = max(num_rows, self.store.shape[2] if self.store is not None else 0)
        keys = -(-(num_keys + KEY_HEADROOM) // self.kv.block_size) * self.kv.block_size
        layers, _, _, kv_heads, dim = self.kv.kv.shape
        self.store, self.rows, self.lengths = None, [], []
        if rows * keys * layers * 2 * kv_heads * dim * self.kv.kv.element_size() <= self.kv.num_bytes:
            self.store = self.kv.kv.new_zeros(layers, 2, rows, keys, kv_heads, dim)  # zeros: padding is never NaN
        return False

    def _fill(self, seqs: list[Sequence], first_row: int) -> None:
        """Copies the sequences' cached keys/values (every layer) into slab rows first_row..."""
        keys_cap = self.store.shape[3]
        slots = self.planner.slot_table(seqs, keys_cap).reshape(-1)  # [n * keys_cap], scratch past each table
        gathered = self.kv.kv.index_select(2, slots)  # [layers, 2, n * keys_cap, kv_heads, D]
        self.store[:, :, first_row:first_row + len(seqs)] = gathered.view(*gathered.shape[:2], len(seqs), keys_cap,
                                                                          *gathered.shape[3:])
