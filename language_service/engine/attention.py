"""Attention over the paged KV cache, registered with transformers' `AttentionInterface` as
"dvd_paged": the stock attention modules project, rotate and write K/V (`PagedKVCache.update`),
then call `paged_attention` with this forward's plan (passed as the `dvd_plan` kwarg).

- `BatchedPlan` (the default): ONE kernel call per layer for the whole batch. Each row's keys
  are gathered from its block table into a padded `[rows, kv_heads, max_keys, head_dim]` view
  (one `index_select` of slot rows) and torch SDPA (or the eager kernel) runs once with a
  length/causal mask. Packed prefill (several prompt chunks in one forward) uses the same call:
  the chunk's queries are scattered into `[chunks, heads, max_chunk, head_dim]`.
- `PagedPlan` (CUDA): decode reading the cache in place through the block table, no gather at
  all: flash-attn's `flash_attn_with_kvcache`, or the Triton kernel of `triton_decode.py` where
  flash-attn is not installed (`decode_attention="triton"`).
- `RowsPlan` (batch-invariant mode): one SDPA call per row on exactly that row's keys, no padding
  and no mask over other rows' lengths, so a row's arithmetic is the same alone or in a crowd.

A single row with all its keys (solo decode, a first prompt chunk) runs without a mask, exactly
as transformers' "sdpa" runs an unpadded sequence, so solo greedy output equals `generate`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from language_service.engine.triton_decode import paged_decode

NAME = "dvd_paged"


def sdpa_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                is_causal: bool, scaling: float) -> torch.Tensor:
    """query [R, heads, T, D], key/value [R, kv_heads, S, D], mask [R, 1, T, S] bool keep-mask or None.

    A batched decode (T == 1, R > 1) folds each group of query heads that share a KV head into
    the query axis ([R, kv_heads, group, D]): one pass over each KV head's keys instead of one per
    query head, half the time of `enable_gqa` on CPU (BENCHMARKS.md). A single row keeps the call
    transformers makes, so solo output stays equal to `generate`'s."""
    rows, heads, num_q, dim = query.shape
    if num_q == 1 and rows > 1:
        grouped = query.view(rows, key.shape[1], heads // key.shape[1], dim)
        return F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling).view(query.shape)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scaling,
                                          enable_gqa=True)


def eager_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                 is_causal: bool, scaling: float) -> torch.Tensor:
    """Plain softmax(QK^T)V with grouped heads, same contract as `sdpa_kernel`."""
    rows, heads, num_q, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(rows, kv_heads, heads // kv_heads * num_q, dim)  # heads of a group share keys
    scores = torch.matmul(grouped, key.transpose(2, 3)).view(rows, heads, num_q, -1) * scaling  # [R, heads, T, S]
    if is_causal:
        mask = causal_mask(num_q, key.shape[2] - num_q, query.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs.view(rows, kv_heads, -1, key.shape[2]), value)  # [R, kv_heads, group * T, D]
    return out.view(rows, heads, num_q, dim)


KERNELS: dict[str, Callable] = {"sdpa": sdpa_kernel, "eager": eager_kernel}


def causal_mask(num_new: int, num_past: int, device: torch.device) -> torch.Tensor:
    """[1, 1, num_new, num_past + num_new] bool: new token i sees positions <= num_past + i."""
    rows = torch.arange(num_new, device=device)[:, None] + num_past
    return (torch.arange(num_past + num_new, device=device)[None, :] <= rows)[None, None]


@dataclass(frozen=True)
class BatchedPlan:
    """Rows padded to `max_keys` keys. Decode feeds queries [rows, heads, 1, D]; packed prefill
    feeds [1, heads, tokens, D] and names where each chunk's queries go (`query_index`)."""

    num_rows: int
    max_keys: int
    gather_slots: torch.Tensor  # [rows * max_keys] cache slot of each (row, key); padding: scratch
    mask: torch.Tensor | None  # [rows, 1, T, max_keys] bool keep-mask or additive 0/-inf; None: all visible, or causal
    is_causal: bool = False
    query_index: torch.Tensor | None = None  # [rows * T] packed token of each (row, query); None: no repacking
    output_index: torch.Tensor | None = None  # [tokens] (row, query) index of each packed token
    kernel: Callable = sdpa_kernel

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        """keys/values: this layer's cache [slots, kv_heads, D]. Returns [rows or 1, T or tokens, heads, D]."""
        heads, dim = query.shape[1], query.shape[3]
        if self.query_index is not None:  # [1, heads, tokens, D] -> [R, heads, T, D]
            query = query[0].index_select(1, self.query_index).view(heads, self.num_rows, -1, dim).transpose(0, 1)
        out = self._attend_rows(query, keys, values, scaling)  # [R, T, heads, D]
        if self.output_index is not None:
            out = out.reshape(-1, heads, dim).index_select(0, self.output_index)[None]  # [1, tokens, heads, D]
        return out

    def attend_flat(self, query: torch.Tensor, layer_kv: torch.Tensor, scaling: float) -> torch.Tensor:
        """The fused layer's layout: query [tokens, heads, D] (any strides), layer_kv this layer's
        cache [2, slots, kv_heads, D] -> [tokens, heads, D]. Keys and values are gathered in one
        `index_select` (one pass over the slot list instead of two: ~15% less gather time)."""
        heads, dim = query.shape[1], query.shape[2]
        if self.query_index is not None:  # packed tokens -> each chunk's queries, padded: [R * T, heads, D]
            query = query.index_select(0, self.query_index)
        shape = (2, self.num_rows, self.max_keys, *layer_kv.shape[2:])
        k, v = layer_kv.index_select(1, self.gather_slots).view(shape).transpose(2, 3)  # each [R, kv_heads, S, D]
        out = self._kernel(query.view(self.num_rows, -1, heads, dim).transpose(1, 2), k, v, scaling)
        out = out.reshape(-1, heads, dim)  # [R * T, heads, D]
        return out if self.output_index is None else out.index_select(0, self.output_index)

    def _attend_rows(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float
                     ) -> torch.Tensor:
        """query [R, heads, T, D]; each row's keys gathered from the cache. Returns [R, T, heads, D]."""
        shape = (self.num_rows, self.max_keys, *keys.shape[1:])
        k = keys.index_select(0, self.gather_slots).view(shape).transpose(1, 2)  # [R, kv_heads, S, D]
        v = values.index_select(0, self.gather_slots).view(shape).transpose(1, 2)
        return self._kernel(query, k, v, scaling)

    def _kernel(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
        """query [R, heads, T, D], k/v [R, kv_heads, S, D] -> [R, T, heads, D]."""
        return self.kernel(query, k, v, self.mask, self.is_causal, scaling).transpose(1, 2)


@dataclass(frozen=True)
class RowsPlan:
    """Batch-invariant: per real row, its keys' slots and its mask (rows past them are padding)."""

    row_slots: list[torch.Tensor]  # per row [num_keys]
    masks: list[torch.Tensor | None]  # per row [1, 1, T, num_keys] or None (all visible / causal)

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        outputs = []
        for row, (slots, mask) in enumerate(zip(self.row_slots, self.masks)):
            k = keys.index_select(0, slots).transpose(0, 1)[None]  # [1, kv_heads, num_keys, D]
            v = values.index_select(0, slots).transpose(0, 1)[None]
            q = query[row:row + 1]  # [1, heads, T, D]
            outputs.append(sdpa_kernel(q, k, v, mask, mask is None and q.shape[2] > 1, scaling).transpose(1, 2))
        padding = query.shape[0] - len(self.row_slots)
        if padding:
            outputs.append(query.new_zeros(padding, query.shape[2], query.shape[1], query.shape[3]))
        return torch.cat(outputs)  # [rows, T, heads, D]


@dataclass(frozen=True)
class PagedPlan:
    """Decode reading the cache in place through each row's block table, no gather: flash-attn's
    `flash_attn_with_kvcache` (`kernel="flash"`) or the Triton kernel (`"triton"`, triton_decode.py)."""

    block_table: torch.Tensor  # [rows, max_blocks] int32
    cache_seqlens: torch.Tensor  # [rows] int32, keys per row including this step's token
    block_size: int
    kernel: str = "flash"  # "flash" | "triton"

    @property
    def num_rows(self) -> int:
        return self.block_table.shape[0]

    def attend_flat(self, query: torch.Tensor, layer_kv: torch.Tensor, scaling: float) -> torch.Tensor:
        """The fused layer's layout: query [rows, heads, D] (one token per row), layer_kv
        [2, slots, kv_heads, D] -> [rows, heads, D]."""
        keys, values = layer_kv
        return self._decode(query, keys, values, scaling)

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        """The stock layers' layout: query [rows, heads, 1, D], keys/values [slots, kv_heads, D]
        -> [rows, 1, heads, D]."""
        return self._decode(query[:, :, 0], keys, values, scaling)[:, None]

    def _decode(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        """query [rows, heads, D], keys/values [slots, kv_heads, D] -> [rows, heads, D]."""
        if self.kernel == "triton":
            return paged_decode(query, keys, values, self.block_table, self.cache_seqlens, self.block_size, scaling)
        from flash_attn import flash_attn_with_kvcache

        shape = (-1, self.block_size, *keys.shape[1:])  # [blocks, block_size, kv_heads, D]
        out = flash_attn_with_kvcache(query.contiguous()[:, None], keys.view(shape), values.view(shape),
                                      cache_seqlens=self.cache_seqlens, block_table=self.block_table,
                                      softmax_scale=scaling, causal=True)  # [rows, 1, heads, D]
        return out[:, 0]


def paged_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: object, scaling: float | None = None, dropout: float = 0.0,
                    dvd_plan: BatchedPlan | RowsPlan | PagedPlan | None = None, **_) -> tuple[torch.Tensor, None]:
    """query: [rows, heads, T, D]; key/value: this layer's cache [slots, kv_heads, D] as
    `PagedKVCache.update` returns it. Returns [rows, T, heads, D]."""
    if dvd_plan is None:
        raise RuntimeError("dvd_paged attention needs a plan (the engine's runner passes one)")
    return dvd_plan.attend(query, key, value, scaling if scaling is not None else query.shape[-1] ** -0.5), None


AttentionInterface.register(NAME, paged_attention)
