"""Next-token choice for a whole batch: `sample(logits [B, vocab], SamplingBatch) -> ids [B]`.

Greedy rows take the argmax (on a CPU as `max` computes it: the same index, cheaper); sampled
rows go temperature -> top-k -> top-p -> multinomial with each sequence's own seeded generator (so
a seed reproduces a sample run to run, alone or in a batch). Every step is a batched tensor op
with per-row parameters; only the random draw loops, over the sampled rows, because each row owns
its generator.

`sample_sequences` is what the runner calls: guided rows are masked to their grammar first
(`guided.py`), `sample` picks, and the logprobs that were asked for are read from the masked
logits, before temperature (`logprobs.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from language_service.engine import guided, logprobs
from language_service.engine.sequence import Sequence


@dataclass(frozen=True)
class SamplingBatch:
    """Per-row sampling parameters of one batch, in row order."""

    greedy: list[bool]
    temperature: list[float]
    top_k: list[int]  # 0: off
    top_p: list[float]  # 1.0: off
    generators: list[torch.Generator | None]

    @classmethod
    def of(cls, seqs: list[Sequence]) -> SamplingBatch:
        p = [s.sampling for s in seqs]
        return cls([x.greedy for x in p], [x.temperature for x in p], [x.top_k for x in p], [x.top_p for x in p],
                   [s.generator for s in seqs])


def sample_sequences(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits: [B, vocab] for the B sequences, in order -> one token id each, with each
    sequence's grammar mask applied to its own row and its logprobs recorded when asked."""
    logits = guided.mask_logits(logits.float(), seqs)  # [B, vocab]: only the guided rows change
    token_ids = sample(logits, SamplingBatch.of(seqs))
    logprobs.record(logits, seqs, token_ids)
    return token_ids


def sample(logits: torch.Tensor, params: SamplingBatch) -> list[int]:
    """logits: [B, vocab] -> one token id per row."""
    logits = logits.float()
    # On a CPU, max's indices are argmax's (the first maximum, NaN propagating; tested) at half the
    # cost: 13 vs 26 ms for 64 rows of a 151,674-token vocabulary, one thread (BENCHMARKS.md,
    # 2026-12-08). Elsewhere argmax, what `generate` takes, until a GPU run has compared them.
    chosen = logits.max(-1).indices if logits.device.type == "cpu" else logits.argmax(-1)  # [B]
    rows = [i for i, greedy in enumerate(params.greedy) if not greedy]
    if rows:
        index = torch.tensor(rows, device=logits.device)
        probs = _probabilities(logits.index_select(0, index), [params.temperature[i] for i in rows],
                               [params.top_k[i] for i in rows], [params.top_p[i] for i in rows]).cpu()
        drawn = [torch.multinomial(probs[j], 1, generator=params.generators[i]) for j, i in enumerate(rows)]
        chosen = chosen.cpu().index_copy(0, index.cpu(), torch.cat(drawn))
    return chosen.tolist()  # one device sync for the whole batch


def _probabilities(logits: torch.Tensor, temperature: list[float], top_k: list[int], top_p: list[float]
                   ) -> torch.Tensor:
    """logits: [S, vocab] of the sampled rows -> their filtered distributions [S, vocab]."""
    device, vocab = logits.device, logits.shape[1]
    logits = logits / torch.tensor(temperature, device=device)[:, None]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [S, vocab]
    k = torch.tensor([k if 0 < k < vocab else vocab for k in top_k], device=device)
    kth = sorted_logits.gather(1, (k - 1)[:, None])  # [S, 1]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    sorted_probs = sorted_logits.softmax(-1)
    # keep the smallest prefix reaching top_p: drop a token once the mass before it reaches top_p
    drop = sorted_probs.cumsum(-1) - sorted_probs >= torch.tensor(top_p, device=device)[:, None]
    drop &= torch.tensor([p < 1.0 for p in top_p], device=device)[:, None]
    logits = logits.scatter(1, order, logits.gather(1, order).masked_fill(drop, float("-inf")))
    return logits.softmax(-1)
