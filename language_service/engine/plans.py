"""Scheduled sequences -> the tensors of one forward: token positions, the cache slots the new
tokens are written to, and the attention plan (`attention.py`) that says which keys each row
reads. Pure functions over the block tables, built once per forward and shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from language_service.engine.attention import KERNELS, BatchedPlan, PagedPlan, RowsPlan, causal_mask
from language_service.engine.scheduler import PrefillChunk
from language_service.engine.sequence import Sequence


@dataclass(frozen=True)
class ForwardInputs:
    position_ids: torch.Tensor  # [R, T]
    write_slots: torch.Tensor  # [R * T] cache slot of each new token, row-major
    plan: BatchedPlan | RowsPlan | PagedPlan
    logits_index: torch.Tensor | None = None  # packed prefill: the token rows whose logits are sampled


class Planner:
    """Knows the cache geometry; builds `ForwardInputs` for decode and prefill forwards."""

    def __init__(self, block_size: int, scratch_block: int, device: torch.device, kernel: str = "sdpa",
                 dtype: torch.dtype = torch.float32) -> None:
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.device = device
        self.kernel = KERNELS[kernel]
        self.dtype = dtype
        self._offsets = torch.arange(block_size, device=device)

    def batch_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """A batched plan's keep-mask, for every layer of the forward. For SDPA it is made additive
        (0 / -inf in the model's dtype) once here: SDPA converts a bool mask exactly so inside each
        call, once per layer; the eager kernel takes the bool mask."""
        if self.kernel is KERNELS["eager"]:
            return keep
        return torch.zeros(keep.shape, dtype=self.dtype, device=self.device).masked_fill_(~keep, float("-inf"))

    def tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, device=self.device)

    def slot_table(self, seqs: list[Sequence], num_keys: int) -> torch.Tensor:
        """[R, num_keys] cache slot of positions 0..num_keys-1 of each sequence (scratch past its table)."""
        width = -(-num_keys // self.block_size)
        tables = [s.block_table[:width] + [self.scratch_block] * (width - len(s.block_table)) for s in seqs]
        blocks = self.tensor(tables)  # [R, width]
        return (blocks[:, :, None] * self.block_size + self._offsets).view(len(seqs), -1)[:, :num_keys]

    def decode(self, seqs: list[Sequence]) -> ForwardInputs:
        """One new token per sequence, all rows in one kernel call per layer."""
        positions = [s.num_cached_tokens for s in seqs]
        num_keys = max(positions) + 1
        slots = self.slot_table(seqs, num_keys)  # [R, S]
        pos = self.tensor(positions)
        mask = None
        if min(positions) + 1 < num_keys:  # rows of different lengths: hide each row's padding keys
            mask = self.batch_mask((torch.arange(num_keys, device=self.device)[None] <= pos[:, None])[:, None, None])
        writes = slots.gather(1, pos[:, None]).view(-1)
        plan = BatchedPlan(len(seqs), num_keys, slots.reshape(-1), mask, kernel=self.kernel)
        return ForwardInputs(pos[:, None], writes, plan)

    def paged_decode(self, seqs: list[Sequence], kernel: str) -> ForwardInputs:
        """One new token per sequence, read in place through the block tables (`PagedPlan`)."""
        positions = [s.num_cached_tokens for s in seqs]
        width = max(len(s.block_table) for s in seqs)
        table = self.tensor([s.block_table + [self.scratch_block] * (width - len(s.block_table)) for s in seqs])
        pos = self.tensor(positions)
        writes = table.gather(1, (pos // self.block_size)[:, None]).view(-1) * self.block_size + pos % self.block_size
        plan = PagedPlan(table.to(torch.int32), (pos + 1).to(torch.int32), self.block_size, kernel)
        return ForwardInputs(pos[:, None], writes, plan)

    def packed_prefill(self, chunks: list[PrefillChunk]) -> ForwardInputs:
        """Every chunk's tokens in one [1, N] forward; attention sees [chunks, T_max] queries."""
        num_keys = max(c.end for c in chunks)
        slots = self.slot_table([c.seq for c in chunks], num_keys)  # [C, S]
        positions = torch.cat([torch.arange(c.start, c.end, device=self.device) for c in chunks])  # [N]
        row_of = torch.cat([torch.full((c.num_tokens,), i, device=self.device) for i, c in enumerate(chunks)])
        ends = torch.tensor([c.num_tokens for c in chunks]).cumsum(0)  # [C] packed index after each chunk
        sampled = [int(end) - 1 for end, c in zip(ends, chunks) if c.samples]
        logits_index = self.tensor(sampled) if sampled else None
        if len(chunks) == 1:
            chunk = chunks[0]
            mask = None if chunk.start == 0 else causal_mask(chunk.num_tokens, chunk.start, self.device)
            plan = BatchedPlan(1, num_keys, slots.reshape(-1), mask, is_causal=chunk.start == 0, kernel=self.kernel)
        else:
            plan = self._packed_plan(chunks, slots, row_of, positions, ends)
        return ForwardInputs(positions[None], slots[row_of, positions], plan, logits_index)

    def _packed_plan(self, chunks: list[PrefillChunk], slots: torch.Tensor, row_of: torch.Tensor,
                     positions: torch.Tensor, ends: torch.Tensor) -> BatchedPlan:
        """Chunk c's query t (position start_c + t) sees keys 0..start_c + t; padded queries are dropped."""
        num_rows, num_keys = slots.shape
        lengths = torch.tensor([c.num_tokens for c in chunks])
        width = int(lengths.max())
        starts = self.tensor([c.start for c in chunks])
        query_pos = starts[:, None] + torch.arange(width, device=self.device)[None]  # [C, T]
        keep = torch.arange(num_keys, device=self.device)[None, None] <= query_pos[:, :, None]  # [C, T, S]
        mask = self.batch_mask(keep[:, None])
        local = torch.arange(width)[None]  # [1, T]
        query_index = torch.where(local < lengths[:, None], (ends - lengths)[:, None] + local, 0)  # [C, T]
        output_index = row_of * width + positions - starts[row_of]  # [N]
        return BatchedPlan(num_rows, num_keys, slots.reshape(-1), mask, False, query_index.view(-1).to(self.device),
                           output_index, self.kernel)

    def rows_decode(self, seqs: list[Sequence], num_rows: int, scratch_slot: int) -> ForwardInputs:
        """Batch-invariant decode: `num_rows` rows (padding past the sequences), per-row attention."""
        positions = [s.num_cached_tokens for s in seqs]
        slots = [self.slot_table([s], p + 1)[0] for s, p in zip(seqs, positions)]
        padding = num_rows - len(seqs)
        writes = torch.stack([row[-1] for row in slots] + [self.tensor(scratch_slot)] * padding)
        pos = self.tensor(positions + [0] * padding)
        return ForwardInputs(pos[:, None], writes, RowsPlan(slots, [None] * len(seqs)))

    def rows_prefill(self, chunk: PrefillChunk) -> ForwardInputs:
        """Batch-invariant prefill: one chunk alone, its keys exactly its sequence's first `end`."""
        slots = self.slot_table([chunk.seq], chunk.end)[0]
        mask = None if chunk.start == 0 else causal_mask(chunk.num_tokens, chunk.start, self.device)
        positions = torch.arange(chunk.start, chunk.end, device=self.device)
        return ForwardInputs(positions[None], slots[chunk.start:], RowsPlan([slots], [mask]))
