"""Iteration-level policy: who is admitted, which prompt chunks run, who decodes. No tensors.

Every step, waiting sequences are admitted in FIFO order while a running slot and a KV extent
are free (the bounded queue in front answers ResourceExhausted when full). Running sequences
that have a whole prompt in cache decode together; prompts are prefilled in chunks of at most
`max_prefill_tokens`, with at most that many prompt tokens per step, so one huge image prompt
cannot stall every decode for its whole length.

Chunk boundaries depend only on the prompt (chunk k is positions [k*C, (k+1)*C)), never on
what else is running: a sequence's prefill does the same arithmetic alone or in a crowd,
which is what makes batched outputs token-exact to solo runs."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dvd.errors import InvalidRequest, ResourceExhausted
from language_service.engine.kv_extents import ExtentAllocator
from language_service.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class PrefillChunk:
    seq: Sequence
    start: int  # first prompt position of the chunk
    num_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def is_last(self) -> bool:
        """The chunk that completes the prompt samples the first output token."""
        return self.end == self.seq.num_prompt_tokens


@dataclass
class Batch:
    decode: list[Sequence] = field(default_factory=list)  # whole prompt cached: one token each
    prefill: list[PrefillChunk] = field(default_factory=list)  # prompt pieces, one forward each

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.prefill)


class Scheduler:
    def __init__(self, max_running_seqs: int, max_waiting_seqs: int, max_kv_tokens: int,
                 max_prefill_tokens: int) -> None:
        if min(max_running_seqs, max_waiting_seqs, max_kv_tokens, max_prefill_tokens) < 1:
            raise ValueError("scheduler limits must be positive")
        self.max_running_seqs = max_running_seqs
        self.max_waiting_seqs = max_waiting_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.kv = ExtentAllocator(max_kv_tokens)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; raises ResourceExhausted when the queue is full."""
        if seq.max_kv_tokens > self.kv.num_tokens:
            raise InvalidRequest(f"request needs {seq.max_kv_tokens} KV positions; this replica holds "
                                 f"{self.kv.num_tokens} in all (shorten the prompt or max_tokens)")
        if len(self.waiting) >= self.max_waiting_seqs:
            raise ResourceExhausted(f"language queue is full ({self.max_waiting_seqs} requests waiting)")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        """Admit what fits, then plan this step: every decodable sequence, plus prompt chunks."""
        batch = Batch(decode=[s for s in self.running if not s.is_prefilling])
        self._admit()
        budget = self.max_prefill_tokens
        for seq in (s for s in self.running if s.is_prefilling):
            start = seq.num_cached_tokens
            num = min(self.max_prefill_tokens, seq.num_prompt_tokens - start)
            if num > budget:
                break
            batch.prefill.append(PrefillChunk(seq, start, num))
            budget -= num
        return batch

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and give its KV extent back."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.kv.free(seq.kv_start, seq.max_kv_tokens)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def find(self, request_id: str) -> Sequence | None:
        return next((s for s in (*self.running, *self.waiting) if s.request_id == request_id), None)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_running_seqs:
            start = self.kv.allocate(self.waiting[0].max_kv_tokens)
            if start is None:
                return  # FIFO: the head waits for room rather than being overtaken
            seq = self.waiting.popleft()
            seq.kv_start, seq.status = start, Status.RUNNING
            self.running.append(seq)
