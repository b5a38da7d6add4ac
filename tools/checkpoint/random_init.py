"""Seeded, input-sensitive random initialisation for InternVL.

At transformers' default init (std 0.02 everywhere, norms at 1, biases at 0) a random InternVL
is useless as a test oracle: attention is near-uniform and every block adds almost nothing to
the residual stream, so the last hidden state is a function of the last token only. Every
prompt ends in "<|im_start|>assistant\\n", so greedy decoding emits the same token sequence
whatever the text or the image, and "split output == monolithic output" would pass for a
serving bug that drops the image or scrambles the prompt.

The scheme here keeps signals at unit scale through every block instead (std 1/sqrt(fan_in),
embeddings at std 1), sharpens attention a little (query/key gain) so the model looks at
particular earlier tokens, and gives the logits a spread of a few units so greedy argmax has
clear margins that fp32 summation-order noise cannot flip. Norm weights, biases and layer
scales are perturbed away from 1/0/constant so a loader that drops or swaps one of them changes
the output. Embedding / lm_head rows past the tokenizer are zero, so greedy decoding never emits
an id the tokenizer cannot decode (real checkpoints' padded rows are likewise untrained). The
lm_head rows of the special tokens are zero too (when lm_head is not tied to the embedding): a
zero logit sits far below the top of a std-4 spread, so the model never ends a reply with
<|im_end|> nor emits <IMG_CONTEXT>/<img> mid-reply. Replies therefore always run to max_tokens,
which keeps benchmark output lengths fixed; stop handling is tested with stop strings/ids.

Each tensor draws from its own generator seeded by (seed, tensor name), so a tensor's values do
not depend on construction order, and the same preset and seed give bit-identical checkpoints.
"""

import math
import re
import zlib
from collections.abc import Callable

import torch
from torch import nn

# Tuned by measuring greedy generations on tiny and small (tests/dvd/test_checkpoint_generation.py):
# with these the outputs vary with both the prompt and the image, the median top-1/top-2 logit gap
# is ~0.8 and under 1% of steps have a gap below 1e-2, against fp32 implementation noise (sdpa vs
# eager attention) of at most ~1e-4 in the logits.
QK_GAIN = 2.0  # query/key weights x this: attention logits of a few units, i.e. peaked but not one-hot
LOGIT_STD = 4.0  # target std of the output logits over the vocabulary
LAYER_SCALE = 0.5  # mean InternViT layer-scale (lambda_1/2); the released ViT's learned values are O(0.1-1)
NORM_WEIGHT_JITTER = 0.1  # std of LayerNorm/RMSNorm weights around 1
BIAS_STD = 0.02
POSITION_STD = 0.5  # ViT absolute position embeddings, relative to unit-scale patch embeddings
# Logit bias of the ViR router's "compress" output (gating.gate.1.bias[0]; "keep" gets 0). With
# random weights the compress-minus-keep logit is an arbitrary function of the tile (measured on
# 16 varied 896px images, 80 tiles: mean -0.7..-0.9, std 0.9..1.2 on tiny-flash / small-flash), so
# this prior sets how often a tile is worth compressing. At 2.5, 94-99% of tiles score >= 0.5 and
# `auto` at the default thresholds compresses 65-71% of tiles (the relative threshold keeps the
# lowest-scoring ones), i.e. ~50% fewer visual tokens: the reduction the Flash models report.
COMPRESS_LOGIT_BIAS = 2.5

InitFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _normal(std: float, mean: float = 0.0) -> InitFn:
    return lambda t, g: torch.randn(t.shape, generator=g) * std + mean


def _fan_in(gain: float = 1.0) -> InitFn:
    """std = gain / sqrt(fan_in): keeps activations at unit scale (for Linear and Conv2d)."""
    return lambda t, g: torch.randn(t.shape, generator=g) * (gain / math.sqrt(t[0].numel()))


def _compress_bias(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.tensor([COMPRESS_LOGIT_BIAS, 0.0], dtype=t.dtype)


def _rule_table(logit_std: float) -> list[tuple[str, InitFn]]:
    """(regex on the parameter name, init) pairs; the first match wins, and every parameter must match."""
    return [
        # Flash heads (ViR router, mlp2): published module names, so norms are matched explicitly.
        (r"pooling_before_gating\.query_token$", _normal(1.0)),
        (r"in_proj_weight$", _fan_in(QK_GAIN)),
        (r"in_proj_bias$", _normal(BIAS_STD)),
        (r"(norm\d|mlp2\.0|gating\.block\d\.5|gating\.gate\.0)\.weight$", _normal(NORM_WEIGHT_JITTER, 1.0)),
        (r"gating\.gate\.1\.bias$", _compress_bias),
        # Vision tower.
        (r"embeddings\.patch_embeddings\.projection\.weight$", _fan_in()),
        (r"embeddings\.position_embeddings$", _normal(POSITION_STD)),
        (r"embeddings\.cls_token$", _normal(1.0)),
        (r"attention\.[qk]_proj\.weight$", _fan_in(QK_GAIN)),
        (r"lambda_[12]$", _normal(LAYER_SCALE * 0.2, LAYER_SCALE)),
        # Projector and both norm types: weights near 1, biases near 0.
        (r"(layernorm\w*|layer_norm|norm)\.weight$", _normal(NORM_WEIGHT_JITTER, 1.0)),
        # Language model.
        (r"embed_tokens\.weight$", _normal(1.0)),
        (r"self_attn\.[qk]_proj\.weight$", _fan_in(QK_GAIN)),
        # Final norm output is unit scale per element, so this std gives logits of std `logit_std`.
        (r"lm_head\.weight$", _fan_in(logit_std)),
        (r"\.bias$", _normal(BIAS_STD)),
        (r"\.weight$", _fan_in()),
    ]


def init_weights_(
    model: nn.Module, seed: int, num_tokens: int, special_ids: list[int], logit_std: float = LOGIT_STD
) -> None:
    """Overwrite every parameter of an InternVLForConditionalGeneration (or Flash heads) in place.

    `num_tokens` is the tokenizer's length: embedding and lm_head rows at or past it are zeroed.
    `special_ids` get zero lm_head rows unless lm_head is tied to the embedding (whose special
    rows must stay non-zero: <|im_start|> and friends are inputs). Parameters shared by weight
    tying are initialised once, under their first name.
    """
    rules = [(re.compile(pattern), fn) for pattern, fn in _rule_table(logit_std)]
    seen: set[int] = set()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            init = next((fn for pattern, fn in rules if pattern.search(name)), None)
            if init is None:
                raise ValueError(f"no init rule for parameter {name}")
            generator = torch.Generator().manual_seed(_tensor_seed(seed, name))
            values = init(param, generator)
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):
                values[num_tokens:] = 0.0
            if name.endswith("lm_head.weight"):
                values[special_ids] = 0.0
            param.copy_(values)


def _tensor_seed(seed: int, name: str) -> int:
    # crc32 rather than hash(): Python salts str hashes per process.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
