"""The decoder's forward: embed -> rotary -> layers -> norm -> lm_head.

The engine calls the checkpoint's own decoder layers (so the arithmetic is transformers'), but
not `Qwen2Model.forward`: that builds masks and caches the engine does not use, and computes the
rotary embedding inside the step, where dynamic RoPE's data-dependent branch would break CUDA
graph capture. Here the rotary embedding is computed first (`rotary`), then `layers` runs the
capturable part.

Two layer paths. A forward with one row alone (solo decode, a single prompt chunk) runs the stock
transformers layers, so solo greedy output equals `generate`'s token for token. A batched forward
(decode with several rows, several prompt chunks packed) runs the fused layers (`fused.py`) when
`fused=True` and every layer is recognised; else the stock ones too (a warning says why). The runner
asks for fused layers on the fast path only: batch-invariant mode stays on the stock layers.

transformers 5.24 renamed the layers' cache argument from `past_key_values` to `cache` (the old
name warns, and goes in 5.40); `cache_kwarg` reads which one the installed layers take."""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

from language_service.engine.fused import FusedLayer, Rope, unsupported_reason

log = logging.getLogger(__name__)


def cache_kwarg(layer: nn.Module) -> str:
    """The name under which a decoder layer takes its KV cache in this transformers release."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def fused_layers(model: nn.Module, layers: list[nn.Module]) -> list[FusedLayer] | None:
    """Fused stand-ins for `layers` (weights fused in place, shared), or None when any layer is
    not one the fused layer recognises."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rotary_dim = 2 * model.model.rotary_emb.inv_freq.numel()
    for layer in layers:
        reason = unsupported_reason(layer, head_dim, rotary_dim)
        if reason is not None:
            log.warning("batched forwards keep transformers' stock decoder layers: %s", reason)
            return None
    return [FusedLayer(layer, config.num_attention_heads, config.num_key_value_heads, head_dim) for layer in layers]


class DecoderForward:
    """A causal LM's decoder as two pure-ish calls the runner (and CUDA graphs) can drive."""

    def __init__(self, model: nn.Module, fused: bool = False) -> None:
        base = model.model
        self.embed_tokens = model.get_input_embeddings()
        self.layers = list(base.layers[: model.config.num_hidden_layers])
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb
        self.lm_head = model.lm_head
        self.cache_kwarg = cache_kwarg(self.layers[0])
        self.fused_layers = fused_layers(model, self.layers) if fused else None
        self.use_fused = self.fused_layers is not None  # benchmarks switch it off to measure the stock layers

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: [R, T, H] (for dtype/device), position_ids: [R, T] -> (cos, sin), each [R, T, head_dim]."""
        return self.rotary_emb(hidden, position_ids)

    def fuses(self, plan) -> bool:
        """Whether a forward under `plan` runs the fused layers: batched plans with several rows."""
        return self.use_fused and getattr(plan, "num_rows", 1) > 1 and hasattr(plan, "attend_flat")

    def layers_forward(self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                       cache, plan, logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: [R, T, H] input embeddings. Returns logits [rows, vocab]: each row's last position,
        or (packed prefill, R == 1) the positions `logits_index` names."""
        if self.fuses(plan):
            return self._fused_forward(hidden, position_embeddings, cache, plan, logits_index)
        kwargs = {self.cache_kwarg: cache, "dvd_plan": plan}
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=position_embeddings, **kwargs)
        hidden = self.norm(hidden)
        last = hidden[:, -1:] if logits_index is None else hidden[0].index_select(0, logits_index)[:, None]
        return self.lm_head(last)[:, -1]  # [rows, vocab]

    def _fused_forward(self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                       cache, plan, logits_index: torch.Tensor | None) -> torch.Tensor:
        """The fused layers over the flat tokens [R * T, H]; only the sampled positions are normed."""
        rows, width = hidden.shape[0], hidden.shape[1]
        rope = Rope(*position_embeddings)
        flat = hidden.reshape(rows * width, -1)  # [N, H]
        for layer in self.fused_layers:
            flat = layer(flat, rope, cache, plan)
        if logits_index is None:  # each row's last token
            last = flat.view(rows, width, -1)[:, -1]  # [R, H]
        else:
            last = flat.index_select(0, logits_index)  # [n, H]
        return self.lm_head(self.norm(last))  # [rows, vocab]

    def __call__(self, hidden: torch.Tensor, position_ids: torch.Tensor, cache, plan,
                 logits_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers_forward(hidden, self.rotary(hidden, position_ids), cache, plan, logits_index)
