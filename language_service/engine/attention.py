"""Row attention: each row of a batch attends over its own sequence's keys in the KV arena.

Registered with transformers' `AttentionInterface` as "dvd_rows", so the stock decoder layers
call it with the arena that `KVArena.update()` returned; `RowPlan` (passed as a forward kwarg)
says where each row's keys are. Per row it calls the configured backend (sdpa or
flash_attention_2, or eager) on exactly that row's valid keys: no padding, no mask over other
rows' lengths, so a row computes the same thing with the same kernel whatever else is in the
batch. That batch invariance is what makes batched greedy outputs equal solo ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "dvd_rows"


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float, **_) -> tuple[torch.Tensor, None]:
    """Plain softmax(QK^T)V for one row; attention_mask is a boolean keep-mask or None (causal)."""
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # [1, heads, L, D]
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [1, heads, T, L]
    if attention_mask is None and query.shape[2] > 1:
        attention_mask = causal_mask(query.shape[2], key.shape[2] - query.shape[2], query.device)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None  # [1, T, heads, D]


def sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float, **_) -> tuple[torch.Tensor, None]:
    """torch SDPA for one row, called exactly as transformers' "sdpa" calls it for an unpadded
    sequence (so a one-chunk prefill matches `generate` bit for bit), minus its per-call checks."""
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                         is_causal=attention_mask is None and query.shape[2] > 1, enable_gqa=True)
    return out.transpose(1, 2), None  # [1, T, heads, D]


def causal_mask(num_new: int, num_past: int, device: torch.device) -> torch.Tensor:
    """[1, 1, num_new, num_past + num_new] bool: new token i sees positions <= num_past + i."""
    rows = torch.arange(num_new, device=device)[:, None] + num_past
    return (torch.arange(num_past + num_new, device=device)[None, :] <= rows)[None, None]


def backend(name: str) -> Callable:
    """The per-row kernel for an attn_implementation name."""
    return {"eager": eager_attention, "sdpa": sdpa_attention}.get(name) or ALL_ATTENTION_FUNCTIONS[name]


@dataclass(frozen=True)
class RowPlan:
    """Where each row's keys live for one forward. Rows past `len(spans)` are padding."""

    spans: list[tuple[int, int]]  # per real row: (first arena position, number of keys incl. the new ones)
    kernel: Callable  # sdpa / flash / eager, as `backend()` returns
    mask: torch.Tensor | None = None  # [1, 1, T, L] for a prompt chunk after the first; None: causal / decode


def row_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: object, scaling: float | None = None, dropout: float = 0.0,
                  dvd_rows: RowPlan | None = None, **_) -> tuple[torch.Tensor, None]:
    """query: [rows, heads, T, D]; key/value: this layer's arena [1, kv_heads, positions, D].
    Returns [rows, T, heads, D] (padding rows are zeros)."""
    if dvd_rows is None:
        raise RuntimeError("dvd_rows attention needs a RowPlan (the engine's runner passes one)")
    outputs = []
    for row, (start, length) in enumerate(dvd_rows.spans):
        k = key[:, :, start:start + length]  # [1, kv_heads, length, D], a view
        v = value[:, :, start:start + length]
        out, _ = dvd_rows.kernel(module, query[row:row + 1], k, v, dvd_rows.mask, dropout=0.0, scaling=scaling)
        outputs.append(out)  # [1, T, heads, D]
    padding = query.shape[0] - len(dvd_rows.spans)
    if padding:
        outputs.append(query.new_zeros(padding, query.shape[2], query.shape[1], query.shape[3]))
    return torch.cat(outputs), None


AttentionInterface.register(NAME, row_attention)
