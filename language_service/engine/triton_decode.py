"""Paged decode attention in Triton: each row's one query attends to its keys read in place
through its block table, with no gather into a padded copy (what flash-attn's
`flash_attn_with_kvcache` does, for GPUs where flash-attn is not installed: Triton ships with
every CUDA build of torch).

One program per (row, KV head, key split). It holds the query heads of one GQA group (padded to
16, `tl.dot`'s smallest tile), walks its share of the row's positions `TILE` keys at a time
(a tile may span several cache blocks: each key's block comes from the table), and keeps an
online softmax (running max `m`, running sum `l`, unnormalised output `acc`, all fp32). Splitting
a row's keys over several programs (flash-decoding) keeps the GPU busy when rows x KV heads is
small and contexts are long; the splits' partial results are merged afterwards in torch:
out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s.

Everything varying per step is in tensors (table, lengths), and the number of splits depends only
on shapes, so the kernel replays under CUDA graphs. On a CPU tensor the kernel runs in Triton's
interpreter: far too slow to serve, exact enough to test (tests/language_service/test_triton_decode.py).
The kernel itself is in `triton_decode_kernel.py`, imported on first use."""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch

MIN_GROUP = 16  # tl.dot needs M >= 16: a GQA group's query heads are padded to this
TILE = 64  # keys per inner step (any number of cache blocks)
MIN_KEYS_PER_SPLIT = 256  # a split below this costs more in the merge than it gains


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_splits(rows: int, kv_heads: int, max_keys: int, device: torch.device) -> int:
    """Key splits per (row, KV head): enough programs for two waves over the GPU's SMs, none
    shorter than MIN_KEYS_PER_SPLIT keys. One on a CPU (the interpreter runs programs in turn)."""
    if device.type != "cuda":
        return 1
    programs = 2 * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    wanted = -(-programs // (rows * kv_heads))
    return max(1, min(wanted, -(-max_keys // MIN_KEYS_PER_SPLIT)))


def interpreter_on() -> bool:
    """Whether Triton runs kernels in its interpreter (CPU tensors). Triton reads the switch when
    it is first imported: tests set TRITON_INTERPRET=1 before that (tests/conftest.py)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def _kernel():
    """The jitted kernel, imported on first use so that importing the engine needs no Triton."""
    from language_service.engine.triton_decode_kernel import paged_decode_kernel

    return paged_decode_kernel


def paged_decode(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, block_table: torch.Tensor,
                 lengths: torch.Tensor, block_size: int, scale: float, splits: int = 0) -> torch.Tensor:
    """query [rows, heads, D] (last dim contiguous), keys/values [slots, kv_heads, D] (one layer's
    cache, same strides), block_table [rows, max_blocks] int32, lengths [rows] int32 (keys per
    row, this step's included). Returns [rows, heads, D] in the query's dtype. `splits` 0 picks
    `num_splits`; the keys a split covers depend only on the table's width, so a graph replays."""
    if query.device.type != "cuda" and not interpreter_on():
        raise ValueError("the Triton paged decode runs on a CUDA device (on a CPU only in Triton's interpreter, "
                         "TRITON_INTERPRET=1, for tests)")
    rows, heads, dim = query.shape
    kv_heads = keys.shape[1]
    if keys.stride() != values.stride() or keys.stride(-1) != 1 or heads % kv_heads:
        raise ValueError(f"paged_decode: keys/values strides {keys.stride()}/{values.stride()} (must match, "
                         f"last dim contiguous), {heads} heads over {kv_heads} KV heads")
    group = heads // kv_heads
    max_keys = block_table.shape[1] * block_size
    splits = splits or num_splits(rows, kv_heads, max_keys, query.device)
    keys_per_split = -(-max_keys // (splits * TILE)) * TILE  # whole tiles: only a row's last tile is partial
    group_pad, dim_pad = max(MIN_GROUP, _next_pow2(group)), max(16, _next_pow2(dim))
    acc = torch.empty(rows, kv_heads, splits, group_pad, dim_pad, dtype=torch.float32, device=query.device)
    ml = torch.empty(rows, kv_heads, splits, 2, group_pad, dtype=torch.float32, device=query.device)
    query = query if query.stride(-1) == 1 else query.contiguous()
    _kernel()[(rows, kv_heads, splits)](
        query, keys, values, block_table, lengths, acc, ml,
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), block_table.stride(0),
        scale, keys_per_split,
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=dim, DIM_PAD=dim_pad, BLOCK_SIZE=block_size, TILE=TILE,
        NUM_SPLITS=splits, NUM_KV_HEADS=kv_heads, IEEE=query.dtype == torch.float32)
    out = _merge(acc, ml)[:, :, :group, :dim]  # [rows, kv_heads, group, D]
    return out.reshape(rows, heads, dim).to(query.dtype)


def _merge(acc: torch.Tensor, ml: torch.Tensor) -> torch.Tensor:
    """acc [R, kv, S, G, D], ml [R, kv, S, 2, G] -> the attention output [R, kv, G, D]. A split
    past a row's keys holds m = -inf, l = 0, acc = 0: its weight exp(-inf - M) is 0."""
    m, l_sum = ml.unbind(3)  # each [R, kv, S, G]
    if acc.shape[2] == 1:
        return acc[:, :, 0] / l_sum[:, :, 0, :, None]
    weight = torch.exp(m - m.amax(2, keepdim=True))  # [R, kv, S, G]
    return (acc * weight[..., None]).sum(2) / (l_sum * weight).sum(2)[..., None]
