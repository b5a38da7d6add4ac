"""Decode under CUDA graphs (as nano-vllm and vLLM do): one graph per (batch-size bucket,
key-length bucket, layer path), captured the first time a step needs it, replayed afterwards;
prefill and anything larger than the biggest bucket run eagerly. A graph holds whichever layers
its forward ran (`DecoderForward.fuses`: fused for buckets of more than one row, unless switched
off), so the layer path is part of its key.

A graph replays fixed kernels on fixed buffers, so everything that varies per step lives in
static tensors refilled before each replay: token ids, the slots the new keys go to, the rotary
cos/sin (computed outside the graph: dynamic RoPE branches on data), and either the gathered
key slots + length mask (SDPA path, keys padded to the bucket) or the block table + lengths
(paged path: flash-attn's or the Triton kernel). Rows past the real batch are padding: token 0,
scratch slot, one visible key.
CUDA only; the runner never builds this on CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from language_service.engine.attention import BatchedPlan, PagedPlan
from language_service.engine.forward import DecoderForward
from language_service.engine.kv_cache import PagedKVCache
from language_service.engine.plans import Planner
from language_service.engine.sequence import Sequence

MIN_KEY_BUCKET = 256


def bucket(n: int, buckets: list[int]) -> int:
    return next(b for b in buckets if b >= n)


def batch_buckets(max_batch: int) -> list[int]:
    small = [b for b in (1, 2, 4, 8) if b < max_batch]
    return small + list(range(16, max_batch, 16)) + [max_batch]


class CudaGraph:
    """`step` warmed up on a side stream (cuBLAS handles, autotuning), then captured into a CUDA
    graph in the memory pool `pool` (shared by all of a runner's graphs); `replay` reruns its
    kernels on the same buffers, and `output` is the tensor they write."""

    def __init__(self, step: Callable[[], torch.Tensor], pool) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = step()
        self.pool = self.graph.pool()

    def replay(self) -> None:
        self.graph.replay()


@dataclass
class _Graph:
    graph: CudaGraph
    ids: torch.Tensor  # [B, 1]
    cos: torch.Tensor  # [B, 1, head_dim]
    sin: torch.Tensor
    writes: torch.Tensor  # [B]
    keys: torch.Tensor  # SDPA: gather slots [B * S]; paged: block table [B, W] int32
    lengths: torch.Tensor  # SDPA: mask [B, 1, 1, S] (additive, `Planner.batch_mask`); paged: seqlens [B] int32
    logits: torch.Tensor  # [B, vocab]


class DecodeGraphs:
    def __init__(self, forward: DecoderForward, kv: PagedKVCache, planner: Planner, max_batch: int,
                 paged: str | None, recorder: Callable = CudaGraph) -> None:
        """`paged`: the paged decode kernel ("flash" | "triton"), None for gather + SDPA/eager.
        `recorder(step, pool)`: what captures a step (`CudaGraph`; the CPU tests pass one that
        replays eagerly on the same buffers, to check what is loaded into them)."""
        self.forward, self.kv, self.planner, self.paged = forward, kv, planner, paged
        self.recorder = recorder
        self.batches = batch_buckets(max_batch)
        self.graphs: dict[tuple[int, int, bool], _Graph] = {}
        self.pool = None

    def fits(self, seqs: list[Sequence]) -> bool:
        return len(seqs) <= self.batches[-1]

    def run(self, seqs: list[Sequence], ids: list[int]) -> torch.Tensor:
        """Logits [len(seqs), vocab] of one decode step, replayed from the bucket's graph."""
        num_keys = max(s.num_cached_tokens for s in seqs) + 1
        width = max(MIN_KEY_BUCKET, 1 << (num_keys - 1).bit_length())  # keys (SDPA) per row, padded
        if self.paged:
            width = -(-width // self.kv.block_size)  # blocks per row
        key = (bucket(len(seqs), self.batches), width, self.forward.use_fused)  # the layer path is baked in
        graph = self.graphs.get(key) or self._capture(*key)
        self._load(graph, seqs, ids)
        graph.graph.replay()
        return graph.logits[: len(seqs)]

    def _load(self, g: _Graph, seqs: list[Sequence], ids: list[int]) -> None:
        rows, n = g.ids.shape[0], len(seqs)
        pos = self.planner.tensor([s.num_cached_tokens for s in seqs] + [0] * (rows - n))  # [B]
        g.ids.copy_(self.planner.tensor(ids + [0] * (rows - n))[:, None])
        cos, sin = self.forward.rotary(g.cos, pos[:, None])
        g.cos.copy_(cos)
        g.sin.copy_(sin)
        bs, scratch = self.kv.block_size, self.planner.scratch_block
        if self.paged:
            tables = [s.block_table + [scratch] * (g.keys.shape[1] - len(s.block_table)) for s in seqs]
            table = self.planner.tensor(tables + [[scratch] * g.keys.shape[1]] * (rows - n))  # [B, W]
            g.keys.copy_(table)
            g.lengths.copy_(pos + 1)
            g.writes.copy_(table.gather(1, (pos // bs)[:, None]).view(-1) * bs + pos % bs)
            return
        num_keys = g.lengths.shape[-1]
        slots = self.planner.slot_table(seqs, num_keys)  # [n, S]
        slots = torch.cat([slots, slots.new_full((rows - n, num_keys), self.kv.scratch_slot)])
        g.keys.copy_(slots.view(-1))
        keep = (torch.arange(num_keys, device=pos.device)[None] <= pos[:, None])[:, None, None]  # [B, 1, 1, S]
        g.lengths.copy_(self.planner.batch_mask(keep))
        g.writes.copy_(slots.gather(1, pos[:, None]).view(-1))

    def _capture(self, rows: int, width: int, fused: bool) -> _Graph:
        """Captures the bucket's step; `fused` (the forward's `use_fused` now) is part of its key only:
        the forward picks the path itself, fused for buckets of more than one row."""
        device, head_dim = self.kv.kv.device, self.kv.head_dim
        long = dict(dtype=torch.long, device=device)
        if self.paged:
            keys = torch.full((rows, width), self.planner.scratch_block, dtype=torch.int32, device=device)
            lengths = torch.ones(rows, dtype=torch.int32, device=device)
            plan = PagedPlan(keys, lengths, self.kv.block_size, self.paged)
        else:
            keys = torch.full((rows * width,), self.kv.scratch_slot, **long)
            keep = torch.zeros(rows, 1, 1, width, dtype=torch.bool, device=device)
            keep[..., 0] = True
            lengths = self.planner.batch_mask(keep)  # made additive once per step, as eager decode's: not per layer
            plan = BatchedPlan(rows, width, keys, lengths, kernel=self.planner.kernel)
        ids = torch.zeros(rows, 1, **long)
        writes = torch.full((rows,), self.kv.scratch_slot, **long)
        cos = torch.ones(rows, 1, head_dim, dtype=self.kv.kv.dtype, device=device)
        sin = torch.zeros_like(cos)

        def step() -> torch.Tensor:
            self.kv.plan_writes(writes)
            return self.forward.layers_forward(self.forward.embed_tokens(ids), (cos, sin), self.kv, plan)

        graph = self.recorder(step, self.pool)
        self.pool = graph.pool
        captured = _Graph(graph, ids, cos, sin, writes, keys, lengths, graph.output)
        self.graphs[(rows, width, fused)] = captured
        return captured
