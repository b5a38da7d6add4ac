"""Executes the LLM on a scheduled batch. No policy here: it runs what it is given.

Fast path (the default):
- Decode: one forward for every decoding sequence, one token each; one attention call per layer
  for the whole batch (`BatchedPlan`; on CUDA `PagedPlan`: flash-attn's or the Triton paged
  kernel, reading the cache in place), under a CUDA graph per batch-size bucket when enabled.
- Prefill: every scheduled prompt chunk packed into one `[1, tokens]` forward, fed `inputs_embeds`
  (text embeddings with the image features scattered into the chunk's `<IMG_CONTEXT>` positions).
- Layers: batched forwards (several rows or chunks) run the fused decoder layers (`fused.py`,
  `fused_layers=True`), a single row the stock transformers layers (`forward.py`).

Batch-invariant mode (`batch_invariant=True`): a sequence's logits do not depend on its
neighbours, bit for bit. Stock layers only; attention runs per row (`RowsPlan`), every prompt chunk gets its own
forward, and decode batches are padded to a multiple of `DECODE_ROW_MULTIPLE` rows: BLAS picks
different kernels, with different summation orders, for different row counts (MKL's sgemm on
AVX2 computes small-M products in 4-row tiles whose results differ from the 1-3 row remainder
paths), so padding keeps every row on the full-tile path at every batch size. Padding rows feed
token 0 at position 0, write to the cache's scratch block and get no attention."""

from __future__ import annotations

import torch

from language_service.engine.attention import NAME as PAGED_ATTENTION
from language_service.engine.cuda_graphs import DecodeGraphs
from language_service.engine.forward import DecoderForward
from language_service.engine.kv_cache import PagedKVCache
from language_service.engine.plans import ForwardInputs, Planner
from language_service.engine.sampler import sample_sequences
from language_service.engine.scheduler import Batch, PrefillChunk
from language_service.engine.sequence import Sequence

DECODE_ROW_MULTIPLE = 4
BACKENDS = ("sdpa", "eager", "flash", "triton")
PAGED_BACKENDS = ("flash", "triton")  # decode reads the cache in place through the block tables


class ModelRunner:
    def __init__(self, model, image_token_id: int, num_blocks: int, block_size: int, backend: str = "sdpa",
                 batch_invariant: bool = False, cuda_graphs: bool = False, max_graph_batch: int = 64,
                 fused_layers: bool = True) -> None:
        layer_types = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"the engine runs full-attention decoders only, this one has {sorted(layer_types)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        self.image_token_id = image_token_id
        self.backend = backend
        self.batch_invariant = batch_invariant
        self.decode_row_multiple = DECODE_ROW_MULTIPLE if batch_invariant else 1
        self.kv = PagedKVCache(model.config, num_blocks, block_size, self.device, self.dtype)
        kernel = "eager" if backend == "eager" else "sdpa"
        self.planner = Planner(block_size, num_blocks, self.device, kernel, self.dtype)
        self.forward = DecoderForward(model, fused=fused_layers and not batch_invariant)
        self.embed_tokens = self.forward.embed_tokens
        model.set_attn_implementation(PAGED_ATTENTION)
        self.graphs = None
        if cuda_graphs and self.device.type == "cuda" and not batch_invariant:
            paged = backend if backend in PAGED_BACKENDS else None
            self.graphs = DecodeGraphs(self.forward, self.kv, self.planner, max_graph_batch, paged)

    @torch.inference_mode()
    def run(self, batch: Batch) -> list[tuple[Sequence, int]]:
        """Runs the step; returns (sequence, sampled token) for every sequence that produced one
        (the decoders that caught up with their output, and prompts whose last chunk ran)."""
        sampled: list[tuple[Sequence, int]] = []
        if batch.decode:
            sampled += self._sampled(batch.decode, self._decode(batch.decode))
        if batch.prefill:
            samplers = [c.seq for c in batch.prefill if c.samples]
            if self.batch_invariant:
                logits = [self._prefill_alone(c) for c in batch.prefill]
                logits = [row for row, c in zip(logits, batch.prefill) if c.samples]
                logits = torch.cat(logits) if logits else None
            else:
                logits = self._prefill_packed(batch.prefill)
            if samplers:
                sampled += zip(samplers, sample_sequences(logits, samplers))
        return sampled

    def _sampled(self, seqs: list[Sequence], logits: torch.Tensor) -> list[tuple[Sequence, int]]:
        """Samples the rows whose sequence is caught up (a recomputed one replays its output first)."""
        keep = [i for i, s in enumerate(seqs) if s.samples_next]
        if len(keep) < len(seqs):
            logits, seqs = logits[keep], [seqs[i] for i in keep]
        return list(zip(seqs, sample_sequences(logits, seqs))) if seqs else []

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """The next token of every sequence in one forward; returns logits [len(seqs), vocab]."""
        ids = [s.token_at(s.num_cached_tokens) for s in seqs]
        if self.graphs is not None and self.graphs.fits(seqs):
            return self.graphs.run(seqs, ids)
        if self.batch_invariant:
            rows = -(-len(seqs) // self.decode_row_multiple) * self.decode_row_multiple
            inputs = self.planner.rows_decode(seqs, rows, self.kv.scratch_slot)
            ids += [0] * (rows - len(seqs))
        elif self.backend in PAGED_BACKENDS:
            inputs = self.planner.paged_decode(seqs, self.backend)
        else:
            inputs = self.planner.decode(seqs)
        embeds = self.embed_tokens(torch.tensor(ids, device=self.device)[:, None])  # [R, 1, H]
        return self._forward(embeds, inputs)[: len(seqs)]

    def _prefill_packed(self, chunks: list[PrefillChunk]) -> torch.Tensor:
        """All chunks in one forward; returns the sampling chunks' last-position logits [n, vocab]
        (the last token's when none samples: unused)."""
        embeds = torch.cat([self._embed(c) for c in chunks], dim=1)  # [1, N, H]
        return self._forward(embeds, self.planner.packed_prefill(chunks))

    def _prefill_alone(self, chunk: PrefillChunk) -> torch.Tensor:
        """One chunk in its own forward (batch-invariant); returns its last logits [1, vocab]."""
        return self._forward(self._embed(chunk), self.planner.rows_prefill(chunk))

    def _forward(self, embeds: torch.Tensor, inputs: ForwardInputs) -> torch.Tensor:
        self.kv.plan_writes(inputs.write_slots)
        return self.forward(embeds, inputs.position_ids, self.kv, inputs.plan, inputs.logits_index)

    def _embed(self, chunk: PrefillChunk) -> torch.Tensor:
        """The chunk's tokens -> [1, T, H], with its image features in place."""
        seq = chunk.seq
        ids = torch.tensor([seq.token_ids(chunk.start, chunk.end)], device=self.device)  # [1, T]
        embeds = self.embed_tokens(ids)  # [1, T, H]
        if seq.image_features is None or chunk.start >= seq.num_prompt_tokens:
            return embeds
        is_image = ids == self.image_token_id  # [1, T]
        is_image[:, max(0, seq.num_prompt_tokens - chunk.start):] = False  # output tokens are never images
        count = int(is_image.sum())
        if count == 0:
            return embeds
        first = seq.prompt_ids[:chunk.start].count(self.image_token_id)  # image tokens in earlier chunks
        features = seq.image_features[first:first + count].to(self.device, embeds.dtype)  # [count, H]
        return embeds.masked_scatter(is_image.unsqueeze(-1), features)
