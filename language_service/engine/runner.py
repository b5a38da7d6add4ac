"""Executes the LLM on a scheduled batch. No policy here: it runs what it is given.

- Prefill: one forward per prompt chunk, fed `inputs_embeds` (text embeddings with the image
  features scattered into the chunk's `<IMG_CONTEXT>` positions), keys/values written into the
  sequence's arena extent.
- Decode: one forward for all decoding sequences, one token each, explicit positions, each row
  attending over its own extent (`attention.py`).

Batch invariance (a sequence's logits do not depend on its neighbours) needs one more thing:
BLAS picks different kernels, with different summation orders, for different row counts. MKL's
sgemm (AVX2) computes small-M products in 4-row tiles whose results differ from the 1-3 row
remainder paths; padding the decode batch to a multiple of `DECODE_ROW_MULTIPLE` keeps every
row on the full-tile path at every batch size. Padding rows feed token 0 at position 0, write
to the arena's scratch position and get no attention."""

from __future__ import annotations

import torch

from language_service.engine.attention import NAME as ROW_ATTENTION
from language_service.engine.attention import RowPlan, backend, causal_mask
from language_service.engine.kv_cache import KVArena
from language_service.engine.sampler import sample
from language_service.engine.scheduler import Batch, PrefillChunk
from language_service.engine.sequence import Sequence

DECODE_ROW_MULTIPLE = 4


class ModelRunner:
    def __init__(self, model, image_token_id: int, max_kv_tokens: int, attn_implementation: str) -> None:
        layer_types = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"the engine runs full-attention decoders only, this one has {sorted(layer_types)}")
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        self.image_token_id = image_token_id
        self.embed_tokens = model.get_input_embeddings()
        self.kernel = backend(attn_implementation)
        self.chunk_masks = attn_implementation != "flash_attention_2"  # flash aligns causal bottom-right itself
        self.kv = KVArena(model.config, max_kv_tokens, self.device, self.dtype)
        self.decode_row_multiple = DECODE_ROW_MULTIPLE  # 1 trades batch invariance for single-stream speed
        self._no_mask = {"full_attention": None}  # precomputed "masks": Qwen2Model builds none of its own
        model.set_attn_implementation(ROW_ATTENTION)

    @torch.inference_mode()
    def run(self, batch: Batch) -> list[tuple[Sequence, int]]:
        """Runs the step; returns (sequence, sampled token) for every sequence that produced one
        (the decoders, and prompts whose last chunk ran)."""
        sampled = []
        if batch.decode:
            sampled += zip(batch.decode, sample(self._decode(batch.decode), batch.decode))
        for chunk in batch.prefill:
            logits = self._prefill(chunk)
            if chunk.is_last:
                sampled.append((chunk.seq, sample(logits, [chunk.seq])[0]))
        return sampled

    def _prefill(self, chunk: PrefillChunk) -> torch.Tensor:
        """One prompt chunk of one sequence; returns the last position's logits [1, vocab]."""
        seq = chunk.seq
        ids = torch.tensor([seq.prompt_ids[chunk.start:chunk.end]], device=self.device)  # [1, T]
        embeds = self._embed(seq, ids, chunk.start)  # [1, T, H]
        positions = torch.arange(chunk.start, chunk.end, device=self.device)[None]  # [1, T]
        mask = None
        if chunk.start and self.chunk_masks:
            mask = causal_mask(chunk.num_tokens, chunk.start, self.device)  # [1, 1, T, start + T]
        plan = RowPlan(spans=[(seq.kv_start, chunk.end)], kernel=self.kernel, mask=mask)
        return self._forward(positions + seq.kv_start, plan, inputs_embeds=embeds, position_ids=positions)

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """The last token of every sequence in one forward; returns logits [len(seqs), vocab]."""
        padding = -len(seqs) % self.decode_row_multiple
        ids = [s.last_token_id for s in seqs] + [0] * padding
        positions = [s.num_cached_tokens for s in seqs] + [0] * padding
        writes = [s.kv_start + s.num_cached_tokens for s in seqs] + [self.kv.scratch_position] * padding
        plan = RowPlan(spans=[(s.kv_start, s.num_cached_tokens + 1) for s in seqs], kernel=self.kernel)
        logits = self._forward(torch.tensor(writes, device=self.device)[:, None], plan,
                               input_ids=torch.tensor(ids, device=self.device)[:, None],  # [B, 1]
                               position_ids=torch.tensor(positions, device=self.device)[:, None])  # [B, 1]
        return logits[: len(seqs)]

    def _forward(self, writes: torch.Tensor, plan: RowPlan, **inputs) -> torch.Tensor:
        """writes: [rows, T] arena positions of the new tokens. Returns last-position logits [rows, vocab]."""
        self.kv.plan_writes(writes)
        out = self.model(**inputs, past_key_values=self.kv, attention_mask=self._no_mask, use_cache=True,
                         logits_to_keep=1, dvd_rows=plan)
        return out.logits[:, -1]

    def _embed(self, seq: Sequence, ids: torch.Tensor, start: int) -> torch.Tensor:
        """ids: [1, T] prompt positions start.. -> [1, T, H] with this chunk's image features in place."""
        embeds = self.embed_tokens(ids)  # [1, T, H]
        if seq.image_features is None:
            return embeds
        is_image = ids == self.image_token_id  # [1, T]
        count = int(is_image.sum())
        if count == 0:
            return embeds
        first = seq.prompt_ids[:start].count(self.image_token_id)  # image tokens in earlier chunks
        features = seq.image_features[first:first + count].to(self.device, embeds.dtype)  # [count, H]
        return embeds.masked_scatter(is_image.unsqueeze(-1), features)
