"""Log probabilities of the sampled tokens (OpenAI `logprobs` / `top_logprobs`).

They come from the logits the sampler used, taken after the grammar mask (a guided row's
distribution is over the tokens its grammar allows) and before temperature, top-k and top-p:
the model's own distribution, as vLLM reports it by default, so a greedy token's logprob is
log_softmax of the forward's logits. Computed only for the rows that asked, in one batched
log_softmax and one top-k, with one device-to-host copy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dvd.types import Logprob, TokenLogprobs

if TYPE_CHECKING:
    from language_service.engine.sequence import Sequence


class TokenVocab:
    """Text and bytes of every token id, for reporting (built once per replica)."""

    def __init__(self, token_bytes: list[bytes]) -> None:
        self.token_bytes = token_bytes

    def describe(self, token_id: int, logprob: float) -> Logprob:
        raw = self.token_bytes[token_id] if token_id < len(self.token_bytes) else b""
        return Logprob(token_id, raw.decode("utf-8", errors="replace"), raw, logprob)


class LogprobBuffer:
    """One sequence's logprobs since its last delta."""

    def __init__(self, vocab: TokenVocab, num_top: int) -> None:
        self.vocab = vocab
        self.num_top = num_top
        self._pending: list[TokenLogprobs] = []

    def add(self, token_id: int, logprob: float, top: list[tuple[int, float]]) -> None:
        chosen = self.vocab.describe(token_id, logprob)
        self._pending.append(TokenLogprobs(chosen, tuple(self.vocab.describe(t, lp) for t, lp in top)))

    def take(self) -> list[TokenLogprobs]:
        out, self._pending = self._pending, []
        return out


def record(logits: torch.Tensor, seqs: list[Sequence], token_ids: list[int]) -> None:
    """logits: [B, V] as the sampler saw them (masked, before temperature); token_ids: the
    sampled token of each row. Adds one entry to every asking sequence's buffer."""
    rows = [i for i, seq in enumerate(seqs) if seq.logprob_buffer is not None]
    if not rows:
        return
    index = torch.tensor(rows, device=logits.device)
    logprobs = torch.log_softmax(logits[index], dim=-1)  # [R, V]
    chosen_ids = torch.tensor([token_ids[i] for i in rows], device=logits.device)[:, None]  # [R, 1]
    chosen = logprobs.gather(1, chosen_ids)[:, 0].tolist()  # [R]
    num_top = max(seqs[i].logprob_buffer.num_top for i in rows)
    top_values, top_ids = logprobs.topk(num_top, dim=-1) if num_top else (logprobs[:, :0], logprobs[:, :0])
    top_values, top_ids = top_values.tolist(), top_ids.tolist()  # [R, k] each
    for j, i in enumerate(rows):
        buffer = seqs[i].logprob_buffer
        top = [(int(t), v) for t, v in zip(top_ids[j][: buffer.num_top], top_values[j][: buffer.num_top])
               if v != float("-inf")]  # a grammar's forbidden tokens are not alternatives
        buffer.add(token_ids[i], chosen[j], top)
