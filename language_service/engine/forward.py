"""The decoder's forward over its stock modules: embed -> rotary -> layers -> norm -> lm_head.

The engine calls the checkpoint's own decoder layers (so the arithmetic is transformers'), but
not `Qwen2Model.forward`: that builds masks and caches the engine does not use, and computes the
rotary embedding inside the step, where dynamic RoPE's data-dependent branch would break CUDA
graph capture. Here the rotary embedding is computed first (`rotary`), then `layers` runs the
capturable part.

transformers 5.24 renamed the layers' cache argument from `past_key_values` to `cache` (the old
name warns, and goes in 5.40); `cache_kwarg` reads which one the installed layers take."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def cache_kwarg(layer: nn.Module) -> str:
    """The name under which a decoder layer takes its KV cache in this transformers release."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


class DecoderForward:
    """A causal LM's decoder as two pure-ish calls the runner (and CUDA graphs) can drive."""

    def __init__(self, model: nn.Module) -> None:
        base = model.model
        self.embed_tokens = model.get_input_embeddings()
        self.layers = list(base.layers[: model.config.num_hidden_layers])
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb
        self.lm_head = model.lm_head
        self.cache_kwarg = cache_kwarg(self.layers[0])

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: [R, T, H] (for dtype/device), position_ids: [R, T] -> (cos, sin), each [R, T, head_dim]."""
        return self.rotary_emb(hidden, position_ids)

    def layers_forward(self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                       cache, plan, logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: [R, T, H] input embeddings. Returns logits [rows, vocab]: each row's last position,
        or (packed prefill, R == 1) the positions `logits_index` names."""
        kwargs = {self.cache_kwarg: cache, "dvd_plan": plan}
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=position_embeddings, **kwargs)
        hidden = self.norm(hidden)
        last = hidden[:, -1:] if logits_index is None else hidden[0].index_select(0, logits_index)[:, None]
        return self.lm_head(last)[:, -1]  # [rows, vocab]

    def __call__(self, hidden: torch.Tensor, position_ids: torch.Tensor, cache, plan,
                 logits_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers_forward(hidden, self.rotary(hidden, position_ids), cache, plan, logits_index)
