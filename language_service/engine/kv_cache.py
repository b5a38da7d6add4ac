"""The KV arena: every layer's keys and values for every running sequence, allocated once.

One tensor `[layers, 2, 1, kv_heads, num_tokens + 1, head_dim]`, zero-initialised (a masked or
unused position never holds NaN). Sequences own contiguous extents of the token axis (handed
out by the scheduler's `ExtentAllocator`), so a sequence's keys are a zero-copy view and nothing
is re-concatenated per token. The extra last position is scratch: padding rows of a decode batch
write there and nobody reads it.

It is a `transformers.Cache` so the stock decoder layers call `update()` on it; the runner sets
the write positions of the coming forward with `plan_writes()` first."""

from __future__ import annotations

import torch
from transformers import Cache, PretrainedConfig


class KVArena(Cache):
    def __init__(self, config: PretrainedConfig, num_tokens: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(layers=[])
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_layers = int(config.num_hidden_layers)
        self.num_tokens = num_tokens
        self.scratch_position = num_tokens
        # kv: [layers, 2 (key, value), 1, kv_heads, num_tokens + 1, head_dim]; the 1 makes every
        # sequence's slice the [batch, heads, length, dim] view attention kernels take
        self.kv = torch.zeros(self.num_layers, 2, 1, config.num_key_value_heads, num_tokens + 1, head_dim,
                              device=device, dtype=dtype)
        self._write_positions: torch.Tensor | None = None  # [rows * new_tokens], row-major

    @property
    def num_bytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def __len__(self) -> int:
        return self.num_layers

    def plan_writes(self, positions: torch.Tensor) -> None:
        """positions: [rows, new_tokens] arena index for each new token of the coming forward."""
        self._write_positions = positions.reshape(-1).to(self.kv.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """key/value_states: [rows, kv_heads, new_tokens, head_dim]. Writes them at the planned
        positions; returns this layer's whole arena (keys, values), each [1, kv_heads, num_tokens + 1,
        head_dim], for the row attention (`attention.py`) to slice per sequence."""
        keys, values = self.kv[layer_idx]  # each [1, kv_heads, num_tokens + 1, head_dim]
        heads, dim = key_states.shape[1], key_states.shape[3]
        # [rows, kv_heads, new, dim] -> [kv_heads, rows * new, dim], matching the row-major positions
        keys[0].index_copy_(1, self._write_positions, key_states.transpose(0, 1).reshape(heads, -1, dim))
        values[0].index_copy_(1, self._write_positions, value_states.transpose(0, 1).reshape(heads, -1, dim))
        return keys, values
