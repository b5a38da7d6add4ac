"""Iteration-level policy: who is admitted, who is preempted, which prompt chunks run, who
decodes. No tensors.

Every step, running sequences that have their prefill in cache decode, each first taking a KV
block if its next token starts one. When no block is free the newest running sequence is
preempted (its blocks freed, back to the head of the queue, recomputed later) until the older
ones fit: work is delayed, never refused. Then, unless something was just preempted, waiting
sequences are admitted in FIFO order while a running slot and blocks for their prefill are free,
keeping a small watermark of blocks (1%) for the running sequences' next tokens so an admission
is not undone by a preemption a few steps later (the bounded queue in front answers
ResourceExhausted when full). Prompts are prefilled in chunks
of at most `max_prefill_tokens`, with at most that many prompt tokens per step, so one huge image
prompt cannot stall every decode for its whole length.

Chunk boundaries depend only on the prompt (chunk k is positions [k*C, (k+1)*C)), never on
what else is running, which batch-invariant mode needs for token-exact batched outputs. In that
mode a recomputed sequence re-prefills only its prompt and replays its output through decode
steps, so its cache is rebuilt with exactly the arithmetic that built it the first time.

With prefix caching (the block manager's; off in batch-invariant mode) an admitted sequence
starts with the cached blocks of its prefix and prefills from the first position they do not
hold; a preempted one usually finds its own blocks still cached when it is readmitted."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dvd.errors import InvalidRequest, ResourceExhausted
from language_service.engine.block_manager import BlockManager
from language_service.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class PrefillChunk:
    seq: Sequence
    start: int  # first position of the chunk
    num_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def samples(self) -> bool:
        """The chunk that completes a fresh prompt samples the first output token."""
        return self.end == self.seq.num_tokens


@dataclass
class Batch:
    decode: list[Sequence] = field(default_factory=list)  # prefill cached: one token each
    prefill: list[PrefillChunk] = field(default_factory=list)  # prompt pieces, packed into one forward
    num_preempted: int = 0
    num_cached_prompt_tokens: int = 0  # of the sequences admitted this step: positions the prefix cache held

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.prefill)


class Scheduler:
    def __init__(self, max_running_seqs: int, max_waiting_seqs: int, blocks: BlockManager,
                 max_prefill_tokens: int, replay_outputs: bool = False) -> None:
        if min(max_running_seqs, max_waiting_seqs, max_prefill_tokens) < 1:
            raise ValueError("scheduler limits must be positive")
        self.max_running_seqs = max_running_seqs
        self.max_waiting_seqs = max_waiting_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.blocks = blocks
        self.replay_outputs = replay_outputs  # batch-invariant recompute: re-prefill the prompt only
        self.watermark_blocks = max(1, blocks.num_blocks // 100)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the newest is preempted first

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; raises ResourceExhausted when the queue is full."""
        if seq.max_kv_tokens > self.blocks.num_tokens:
            raise InvalidRequest(f"request needs {seq.max_kv_tokens} KV positions; this replica holds "
                                 f"{self.blocks.num_tokens} in all (shorten the prompt or max_tokens)")
        if len(self.waiting) >= self.max_waiting_seqs:
            raise ResourceExhausted(f"language queue is full ({self.max_waiting_seqs} requests waiting)")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        """Plan this step: every decodable sequence (preempting when blocks run out), then
        admissions and prompt chunks."""
        batch = Batch()
        for seq in [s for s in self.running if not s.is_prefilling]:
            if seq.status is not Status.RUNNING:
                continue  # preempted a moment ago, for an older sequence's block
            while not self.blocks.grow(seq, seq.num_cached_tokens + 1):
                victim = self.running[-1]
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
            else:
                batch.decode.append(seq)
        if not batch.num_preempted:
            batch.num_cached_prompt_tokens = self._admit()
        self._plan_prefill(batch)
        return batch

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and give its KV blocks back."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.blocks.free(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def find(self, request_id: str) -> Sequence | None:
        return next((s for s in (*self.running, *self.waiting) if s.request_id == request_id), None)

    def _plan_prefill(self, batch: Batch) -> None:
        budget = self.max_prefill_tokens
        for seq in (s for s in self.running if s.is_prefilling):
            start = seq.num_cached_tokens
            num = min(self.max_prefill_tokens - start % self.max_prefill_tokens, seq.num_prefill - start)
            if num > budget:
                break
            batch.prefill.append(PrefillChunk(seq, start, num))
            budget -= num

    def _admit(self) -> int:
        """Admit from the queue's head while room lasts; returns the positions found cached."""
        cached = 0
        while self.waiting and len(self.running) < self.max_running_seqs:
            seq = self.waiting[0]
            reserve = self.watermark_blocks if self.running else 0  # alone, a sequence may use every block
            if not self.blocks.admit(seq, seq.num_prefill, reserve):
                break  # FIFO: the head waits for room rather than being overtaken
            cached += seq.num_cached_tokens
            if not seq.num_preemptions:  # what the caller is told: its own recomputes do not count
                seq.num_cached_prompt_tokens = seq.num_cached_tokens
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
        return cached

    def _preempt(self, seq: Sequence) -> None:
        """Free `seq`'s blocks and queue it first; it recomputes its cache when readmitted."""
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status, seq.num_cached_tokens = Status.WAITING, 0
        seq.num_prefill = seq.num_prompt_tokens if self.replay_outputs or not seq.output_ids else seq.num_tokens - 1
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
