"""Guided decoding inside the batched sampling step: one grammar matcher per constrained
sequence, its token bitmask applied to that sequence's row of the [B, V] logits just before
sampling, and the accepted token fed back to it.

Only the constrained rows are filled and masked: an unconstrained neighbour's logits are not
touched, so its tokens are the ones it would sample alone. A matcher allows a stop token only
where its grammar accepts, so EOS cannot end a document early; max_tokens can (LENGTH)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

try:
    import xgrammar as xgr
except ImportError:  # see grammars.py: without it no GuideState is ever made
    xgr = None

if TYPE_CHECKING:
    from language_service.engine.sequence import Sequence

log = logging.getLogger(__name__)

class GuideState:
    """One sequence's position in its grammar. Lives on the engine thread."""

    def __init__(self, grammar: xgr.CompiledGrammar, allowed_words: np.ndarray | None = None) -> None:
        self.matcher = xgr.GrammarMatcher(grammar)
        self.allowed_words = allowed_words  # [W] int32: tokens this guide may ever use (None: all)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into bitmask[row] ([rows, ceil(V / 32)] int32, on CPU)."""
        self.matcher.fill_next_token_bitmask(bitmask, row)
        if self.allowed_words is not None:
            bitmask.numpy()[row] &= self.allowed_words  # numpy: a torch op per row costs more than the fill

    def advance(self, token_id: int) -> bool:
        """Feed the accepted token; True when the grammar is complete (its stop token accepted)."""
        if not self.matcher.accept_token(token_id):
            # The mask only allows tokens the grammar takes, so this is a bug: end the sequence
            # rather than emit text outside the grammar.
            log.error("grammar rejected token %d that its own mask allowed; ending the sequence", token_id)
            return True
        return self.matcher.is_terminated()


def mask_logits(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """logits: [B, V] float for seqs in order. Rows of guided sequences get -inf wherever their
    grammar forbids the token; other rows are returned as they came."""
    rows = [i for i, seq in enumerate(seqs) if seq.guide is not None]
    if not rows:
        return logits
    vocab_size = logits.shape[-1]
    bitmask = torch.empty(len(rows), (vocab_size + 31) // 32, dtype=torch.int32)  # [R, W]
    for j, i in enumerate(rows):
        seqs[i].guide.fill(bitmask, j)
    forbidden = ~unpack_bitmask(bitmask, vocab_size)  # [R, V] numpy bool
    if logits.is_cpu:
        # numpy, in place and single-threaded: torch's small masked ops on CPU open an intra-op
        # parallel region per call, which costs milliseconds whenever the cores are contended
        rows_view = logits.numpy()[rows]  # [R, V] copy
        rows_view[forbidden] = -np.inf
        logits.numpy()[rows] = rows_view
        return logits
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(torch.from_numpy(forbidden).to(logits.device), float("-inf"))
    return logits


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> np.ndarray:
    """bitmask: [R, W] int32 on CPU -> [R, vocab_size] bool, True where the token is allowed
    (bit j of word w is token 32w + j; the words are little-endian in memory)."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")  # [R, 32W]
    return bits[:, :vocab_size].astype(bool)


def advance(seq: Sequence, token_id: int) -> bool:
    """Engine hook after a token is accepted: True when the sequence's grammar is complete."""
    return seq.guide is not None and seq.guide.advance(token_id)
