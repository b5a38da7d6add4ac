"""The paged KV cache: every layer's keys and values in fixed-size blocks, allocated once.

One tensor `[layers, 2, (num_blocks + 1) * block_size, kv_heads, head_dim]`, zero-initialised
(a masked or unused slot never holds NaN). Viewed per layer as `[num_blocks + 1, block_size,
kv_heads, head_dim]` it is exactly flash-attn's paged layout; flat, its rows are token slots, so
gathering a sequence's keys is one `index_select` of contiguous rows (measured, see BENCHMARKS.md:
far cheaper than a gather along a head-major axis). The extra last block is scratch: padding rows
(batch-invariant and CUDA-graph decode) write there, padded key positions read it, masked.

It is a `transformers.Cache` so the stock attention modules call `update()` on it; the runner
sets the slots the coming forward writes with `plan_writes()` first."""

from __future__ import annotations

import torch
from transformers import Cache, PretrainedConfig


class PagedKVCache(Cache):
    def __init__(self, config: PretrainedConfig, num_blocks: int, block_size: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__(layers=[])
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_kv_heads = int(config.num_key_value_heads)
        self.num_layers = int(config.num_hidden_layers)
        self.block_size = block_size
        self.scratch_slot = num_blocks * block_size  # first slot of the scratch block
        # kv: [layers, 2 (key, value), slots, kv_heads, head_dim]
        self.kv = torch.zeros(self.num_layers, 2, (num_blocks + 1) * block_size, self.num_kv_heads, self.head_dim,
                              device=device, dtype=dtype)
        self._write_slots: torch.Tensor | None = None  # [rows * new_tokens], row-major

    @property
    def num_bytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def __len__(self) -> int:
        return self.num_layers

    def plan_writes(self, slots: torch.Tensor) -> None:
        """slots: [rows * new_tokens] (row-major) cache slot of each new token of the coming forward."""
        self._write_slots = slots

    def blocks(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's (keys, values), each [num_blocks + 1, block_size, kv_heads, head_dim]."""
        keys, values = self.kv[layer_idx]
        shape = (-1, self.block_size, self.num_kv_heads, self.head_dim)
        return keys.view(shape), values.view(shape)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """key/value_states: [rows, kv_heads, new_tokens, head_dim] (the stock attention modules'
        layout). Writes them at the planned slots; returns this layer's whole cache (keys, values),
        each [slots, kv_heads, head_dim], for the paged attention (`attention.py`) to gather from."""
        # [rows, kv_heads, new, dim] -> [rows * new, kv_heads, dim], matching the row-major slots
        shape = (-1, self.num_kv_heads, self.head_dim)
        keys, values = self.write(layer_idx, key_states.transpose(1, 2).reshape(shape),
                                  value_states.transpose(1, 2).reshape(shape))
        return keys, values

    def write(self, layer_idx: int, keys_new: torch.Tensor, values_new: torch.Tensor) -> torch.Tensor:
        """keys_new/values_new: [rows * new_tokens, kv_heads, head_dim] (row-major, any strides),
        written at the planned slots. Returns this layer's cache [2 (keys, values), slots, kv_heads, head_dim]."""
        layer_kv = self.kv[layer_idx]
        keys, values = layer_kv  # each [slots, kv_heads, head_dim]
        keys.index_copy_(0, self._write_slots, keys_new)
        values.index_copy_(0, self._write_slots, values_new)
        return layer_kv
