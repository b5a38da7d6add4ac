"""InternVL3.5-Flash's Visual Resolution Router (ViR) and its 64-token projector, as published.

Module and parameter names are the Flash checkpoints' own (`mlp2.*`, `pooling_before_gating.*`,
`gating.*` in `modeling_internvl_chat.py` of the OpenGVLab/InternVL3_5-*-Flash repos), so the
original-layout tensors load into `FlashHeads` without renaming:

- `CrossAttentionPooling` (`pooling_before_gating`): a learned query attends over one tile's ViT
  tokens, four times. The published forward defines attn1..attn4 / norm1..norm4 but runs attn1,
  norm1 and then attn2, norm2 three times; attn3/attn4/norm3/norm4 are in every checkpoint and
  never used. That is matched on purpose: the released weights were trained and evaluated with it.
- `Gating` (`gating`): four residual MLP blocks (Linear to 4x, GELU, Dropout, Linear back,
  Dropout, LayerNorm), then LayerNorm + Linear(hidden, 2) and a softmax. Column 0 is the tile's
  compress score.
- `mlp2`: LayerNorm, Linear(16C, 2H), GELU, Dropout, Linear(2H, 2H), GELU, Dropout, Linear(2H, H),
  fed the 0.25 pixel shuffle of the ViT grid: 64 LLM tokens per tile instead of mlp1's 256.

`decide` is the published rule (`generate_flash`): a tile is compressed when its score is above
the `relative` quantile of the scores of every tile it is ranked with AND at least `absolute`.
"""

from __future__ import annotations

import torch
from torch import nn

POOLING_HEADS = 16  # CrossAttentionPooling's default, which the published model keeps
GATING_EXPANSION = 4


class CrossAttentionPooling(nn.Module):
    """[tiles, tokens, C] -> [tiles, C]: one learned query pooled over each tile's tokens."""

    def __init__(self, dim: int, num_heads: int = POOLING_HEADS) -> None:
        super().__init__()
        self.query_token = nn.Parameter(torch.empty(1, dim))  # [1, C]
        for i in range(1, 5):
            setattr(self, f"attn{i}", nn.MultiheadAttention(embed_dim=dim, num_heads=num_heads, batch_first=True))
            setattr(self, f"norm{i}", nn.LayerNorm(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Every tile has the same number of tokens, so the published padding is a plain copy into the
        # query's dtype and its key-padding mask is all False (kept: it selects MHA's masked code path).
        padded = tokens.to(self.query_token.dtype)  # [B, L, C]
        padding_mask = torch.zeros(padded.shape[:2], dtype=torch.bool, device=padded.device)  # [B, L]
        query = self.query_token.unsqueeze(0).expand(padded.shape[0], -1, -1)  # [B, 1, C]
        out, _ = self.attn1(query, padded, padded, key_padding_mask=padding_mask)
        out = self.norm1(out)
        for _ in range(3):  # the published forward's steps 2-4 all use attn2 / norm2
            out, _ = self.attn2(out, padded, padded, key_padding_mask=padding_mask)
            out = self.norm2(out)
        return out.squeeze(1)  # [B, C]


def _gating_block(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout), nn.LayerNorm(dim))


class Gating(nn.Module):
    """[tiles, C] -> [tiles, 2] softmax probabilities; column 0 is "compress"."""

    def __init__(self, hidden_size: int, expansion_factor: int = GATING_EXPANSION, dropout: float = 0.1) -> None:
        super().__init__()
        mid = hidden_size * expansion_factor
        self.block1 = _gating_block(hidden_size, mid, dropout)
        self.block2 = _gating_block(hidden_size, mid, dropout)
        self.block3 = _gating_block(hidden_size, mid, dropout)
        self.block4 = _gating_block(hidden_size, mid, dropout)
        self.gate = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in (self.block1, self.block2, self.block3, self.block4):
            x = x + block(x)
        return torch.softmax(self.gate(x), dim=-1)


def make_mlp2(vit_hidden: int, llm_hidden: int, downsample_ratio: float) -> nn.Sequential:
    """The 64-token projector; its Sequential indices are the checkpoint's (mlp2.0/1/4/7)."""
    in_dim = vit_hidden * int(1 / downsample_ratio) ** 4
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, llm_hidden * 2), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(llm_hidden * 2, llm_hidden * 2), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(llm_hidden * 2, llm_hidden))


class FlashHeads(nn.Module):
    """Everything a Flash checkpoint adds to the vision half: router and second projector."""

    def __init__(self, vit_hidden: int, llm_hidden: int, downsample_ratio: float) -> None:
        super().__init__()
        self.mlp2 = make_mlp2(vit_hidden, llm_hidden, downsample_ratio)
        self.pooling_before_gating = CrossAttentionPooling(vit_hidden)
        self.gating = Gating(vit_hidden)

    def compress_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [tiles, 1024, C] ViT output (class token dropped) -> [tiles] compress scores,
        in the compute dtype (the published comparisons run in it)."""
        return self.gating(self.pooling_before_gating(tokens))[:, 0]


def decide(scores: torch.Tensor, group: torch.Tensor, relative: float, absolute: float) -> torch.Tensor:
    """Which tiles take the 64-token path. scores: [T] this image's compress scores; group: [G]
    the scores they are ranked against (the request's tiles, these included). Returns [T] bool.

    Written as `generate_flash` writes it, dtypes included: the quantile of the float32 group is a
    0-d float32 tensor, and comparing the scores (compute dtype) with it follows torch's promotion.
    """
    threshold = torch.quantile(group.to(torch.float32), relative)
    return (scores > threshold.to(scores.device)) & (scores >= absolute)
