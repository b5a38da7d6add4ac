"""A lean decoder layer for batched forwards (decode with several rows, packed prefill), as
vLLM and nano-vllm run them: one QKV GEMM, one gate_up GEMM, torch's fused RMSNorm, RoPE on q
and k together without rotate_half's cats, the paged KV write and the step's attention plan,
the residual adds folded into the o_proj / down_proj GEMMs. The stock transformers layer costs
~30 small kernels per layer; this one ~15 (BENCHMARKS.md, "Language engine").

One copy of the weights: `fuse_rows` concatenates q/k/v (and gate/up) once and re-points the
stock modules' `.weight` / `.bias` at contiguous row slices of the fused tensor, so the stock
layers (solo decode, batch-invariant mode, `generate`-exact paths) keep running unchanged on the
same storage. The runner fuses after the weights are loaded (`assign_state`) and on their device;
a later `load_state_dict(assign=True)` or `.to()` replaces the parameters, which `fuse_rows`
notices (the views no longer point into the fused tensor) and fuses again. Embedding and
lm_head are untouched, so tied embeddings stay tied.

Only the Llama-family layers this project serves are recognised (`unsupported_reason`): Qwen2
(q/k/v biases), Qwen3 (q_norm / k_norm on the head dim) and Llama (optional attention / MLP
biases), full attention, SiLU MLP, RMSNorm, full-width RoPE. Anything else (sliding window,
another norm or activation, extra or missing submodules, quantised linears) keeps the stock
layers: `DecoderForward` then runs every forward through them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = {"Qwen2DecoderLayer", "Qwen3DecoderLayer", "LlamaDecoderLayer"}
NORMS = {"Qwen2RMSNorm", "Qwen3RMSNorm", "LlamaRMSNorm"}
ACTIVATIONS = {"SiLUActivation", "SiLU"}
LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj"}
ATTENTION_CHILDREN = (PROJECTIONS, PROJECTIONS | {"q_norm", "k_norm"})  # Qwen2 / Llama, Qwen3
MLP_CHILDREN = {"gate_proj", "up_proj", "down_proj", "act_fn"}


def _children(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_children()}


def _is_rms_norm(module: nn.Module) -> bool:
    params = {name for name, _ in module.named_parameters(recurse=False)}
    return type(module).__name__ in NORMS and params == {"weight"} and hasattr(module, "variance_epsilon")


def unsupported_reason(layer: nn.Module, head_dim: int, rotary_dim: int) -> str | None:
    """Why the fused layer cannot stand in for `layer` (None: it can). Checks the module structure
    explicitly rather than trusting the class name alone."""
    if type(layer).__name__ not in LAYERS:
        return f"layer class {type(layer).__name__}"
    if _children(layer) != LAYER_CHILDREN:
        return f"layer submodules {sorted(_children(layer))}"
    attn, mlp = layer.self_attn, layer.mlp
    if _children(attn) not in ATTENTION_CHILDREN:
        return f"attention submodules {sorted(_children(attn))}"
    if getattr(attn, "sliding_window", None) is not None:
        return "sliding-window attention"
    if _children(mlp) != MLP_CHILDREN or type(mlp.act_fn).__name__ not in ACTIVATIONS:
        return f"MLP {sorted(_children(mlp))} with {type(getattr(mlp, 'act_fn', None)).__name__}"
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if any(type(m) is not nn.Linear for m in linears):
        return "linear layers that are not torch.nn.Linear (quantised?)"
    if len({(p.dtype, p.device) for m in linears for p in m.parameters()}) > 1:
        return "projections of different dtypes or devices"
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    norms += [attn.q_norm, attn.k_norm] if hasattr(attn, "q_norm") else []
    if not all(_is_rms_norm(n) for n in norms):
        return "a norm that is not a plain RMSNorm"
    if len(norms) == 4 and norms[2].variance_epsilon != norms[3].variance_epsilon:
        return "q_norm and k_norm with different epsilons"
    if len({m.bias is None for m in linears[:3]}) > 1 or len({m.bias is None for m in linears[4:6]}) > 1:
        return "q/k/v (or gate/up) projections that differ in having a bias"
    if rotary_dim != head_dim or getattr(attn, "head_dim", head_dim) != head_dim:
        return f"rotary width {rotary_dim} != head_dim {head_dim} (partial rotary)"
    return None


def fuse_rows(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [sum out, in], bias [sum out] or None): the linears stacked by output row, with each
    module's parameters re-pointed at its rows, so the stock modules and the fused GEMM read the
    same memory. When the modules already are consecutive rows of one tensor (fused by an earlier
    runner on this model), that tensor is returned and nothing is copied."""
    has_bias = linears[0].bias is not None
    weight = _stacked([m.weight for m in linears])
    bias = _stacked([m.bias for m in linears]) if has_bias else None
    if weight is not None and (bias is not None or not has_bias):
        return weight, bias
    weight = torch.cat([m.weight.detach() for m in linears])  # [sum out, in]
    bias = torch.cat([m.bias.detach() for m in linears]) if has_bias else None  # [sum out]
    row = 0
    for m in linears:
        rows = slice(row, row + m.out_features)
        m.weight = nn.Parameter(weight[rows], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[rows], requires_grad=False)
        row += m.out_features
    return weight, bias


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensor of which `tensors` are consecutive row slices (same storage, each starting where
    the previous one ends), or None."""
    first = tensors[0]
    storage = first.untyped_storage()
    for prev, t in zip(tensors, tensors[1:]):
        same_storage = t.untyped_storage().data_ptr() == storage.data_ptr()
        if not same_storage or t.storage_offset() != prev.storage_offset() + prev.numel():
            return None
    if not all(t.is_contiguous() and t.shape[1:] == first.shape[1:] for t in tensors):
        return None
    shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, first.storage_offset(), shape)


class Rope:
    """RoPE for one forward, shared by every layer. transformers' cos/sin repeat their first half
    (`cat(freqs, freqs)`), and rotate_half(x) = (-x2, x1); so with each head viewed as its two
    halves [2, D/2], x * cos + rotate_half(x) * sin = x * cos + flip(x) * (-sin, sin): the same
    products and sums, without the slice / neg / cat copies, for q and k heads in one pass."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        tokens, dim = cos.shape[0] * cos.shape[1], cos.shape[-1]
        self.cos = cos.reshape(tokens, 1, 2, dim // 2)  # [N, 1, 2, D/2]
        self.sin = sin.reshape(tokens, 1, 2, dim // 2).clone()  # [N, 1, 2, D/2], first half negated
        self.sin[:, :, 0].neg_()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, heads, D] (any strides) -> rotated, [N, heads, D] contiguous."""
        halves = x.unflatten(-1, (2, -1))  # [N, heads, 2, D/2]
        out = halves * self.cos
        return out.addcmul_(halves.flip(2), self.sin).flatten(-2)


class FusedLayer:
    """One decoder layer over flat tokens: hidden [N, H] -> [N, H], reading the stock layer's
    weights (fused views, `fuse_rows`) and writing this layer's keys and values to the paged cache."""

    def __init__(self, layer: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.layer_idx = attn.layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scaling = attn.scaling
        self.qkv_weight, self.qkv_bias = fuse_rows([attn.q_proj, attn.k_proj, attn.v_proj])
        self.gate_up_weight, self.gate_up_bias = fuse_rows([mlp.gate_proj, mlp.up_proj])
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        self.intermediate = mlp.gate_proj.out_features
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.qk_norms = (attn.q_norm, attn.k_norm) if hasattr(attn, "q_norm") else None

    def __call__(self, hidden: torch.Tensor, rope: Rope, cache, plan) -> torch.Tensor:
        tokens, heads = hidden.shape[0], self.num_heads
        qkv = F.linear(_rms_norm(hidden, self.input_norm), self.qkv_weight, self.qkv_bias)  # [N, (heads + 2 kv) D]
        qkv = qkv.view(tokens, heads + 2 * self.num_kv_heads, self.head_dim)
        qk = rope(self._norm_heads(qkv[:, : heads + self.num_kv_heads]))  # [N, heads + kv_heads, D]
        layer_kv = cache.write(self.layer_idx, qk[:, heads:], qkv[:, heads + self.num_kv_heads:])  # [2, slots, kv, D]
        attn = plan.attend_flat(qk[:, :heads], layer_kv, self.scaling)  # [N, heads, D]
        hidden = _residual_linear(hidden, attn.reshape(tokens, -1), self.o_proj)
        gate_up = F.linear(_rms_norm(hidden, self.post_norm), self.gate_up_weight, self.gate_up_bias)  # [N, 2 I]
        act = F.silu(gate_up[:, : self.intermediate]).mul_(gate_up[:, self.intermediate:])  # [N, I]
        return _residual_linear(hidden, act, self.down_proj)

    def _norm_heads(self, qk: torch.Tensor) -> torch.Tensor:
        """Qwen3's per-head q_norm / k_norm (one RMSNorm over every head, then each weight); else as is."""
        if self.qk_norms is None:
            return qk
        q_norm, k_norm = self.qk_norms
        normed = F.rms_norm(qk, (self.head_dim,), None, q_norm.variance_epsilon)  # [N, heads + kv_heads, D]
        normed[:, : self.num_heads].mul_(q_norm.weight)
        normed[:, self.num_heads:].mul_(k_norm.weight)
        return normed


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """torch's fused RMSNorm: the same result as transformers' six-op arithmetic on fp32 CPU
    (measured: max difference 0), about half its time at 16 rows."""
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


def _residual_linear(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """residual + linear(x), the add folded into the GEMM (beta = 1) when there is no bias."""
    if linear.bias is not None:
        return residual + F.linear(x, linear.weight, linear.bias)
    return torch.addmm(residual, x, linear.weight.t())
