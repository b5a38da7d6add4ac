"""Next-token choice per sequence: greedy, or temperature -> top-k -> top-p -> multinomial
with the sequence's own seeded generator (so a seed reproduces a sample run to run).

Guided sequences' rows are masked to their grammar first (`guided.py`); the logprobs that were
asked for are read from these masked logits, before temperature (`logprobs.py`)."""

from __future__ import annotations

import torch

from language_service.engine import guided, logprobs
from language_service.engine.sequence import Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits: [B, vocab] for the B sequences, in order -> one token id each."""
    logits = guided.mask_logits(logits.float(), seqs)  # [B, vocab]: only the guided rows change
    greedy = logits.argmax(-1).tolist()  # [B]: one device sync for the whole batch
    token_ids = [greedy[i] if seq.sampling.greedy else _sample_row(logits[i], seq) for i, seq in enumerate(seqs)]
    logprobs.record(logits, seqs, token_ids)
    return token_ids


def _sample_row(row: torch.Tensor, seq: Sequence) -> int:
    p = seq.sampling
    row = row / p.temperature  # [vocab]
    if 0 < p.top_k < row.shape[0]:
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
        row = row.scatter(0, order[drop], float("-inf"))
    probs = row.softmax(-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=seq.generator))
