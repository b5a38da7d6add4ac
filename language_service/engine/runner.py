"""Executes the LLM on scheduled sequences. No policy here: it runs what it is given.

Prefill takes `inputs_embeds` (text embeddings with the image features scattered into the
`<IMG_CONTEXT>` positions); decode feeds the last token. Each sequence keeps its own
transformers KV cache."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from language_service.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model, image_token_id: int, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.image_token_id = image_token_id
        self.device = device
        self.dtype = dtype
        self.embed_tokens = model.get_input_embeddings()

    @torch.inference_mode()
    def prefill(self, seq: Sequence) -> torch.Tensor:
        """Whole prompt in one forward; returns next-token logits [1, vocab]."""
        ids = torch.tensor([seq.prompt_ids], device=self.device)  # [1, L]
        embeds = self.embed_tokens(ids)  # [1, L, H]
        if seq.image_features is not None:
            mask = (ids == self.image_token_id).unsqueeze(-1)  # [1, L, 1]
            features = seq.image_features.to(self.device, embeds.dtype)  # [num_image_tokens, H]
            embeds = embeds.masked_scatter(mask, features)
        seq.kv_cache = DynamicCache(config=self.model.config)
        out = self.model(inputs_embeds=embeds, past_key_values=seq.kv_cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One new token for each sequence; returns logits [B, vocab]."""
        rows = []
        for seq in seqs:
            ids = torch.tensor([[seq.last_token_id]], device=self.device)  # [1, 1]
            out = self.model(input_ids=ids, past_key_values=seq.kv_cache, use_cache=True, logits_to_keep=1)
            rows.append(out.logits[:, -1])
        return torch.cat(rows)

    def release(self, seq: Sequence) -> None:
        seq.kv_cache = None
