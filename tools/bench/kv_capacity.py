"""How many sequences a fixed KV budget holds at once: the paged scheduler (blocks taken as
tokens are produced) against worst-case reservation (prompt + max_tokens per sequence, which the
engine did before paging: a contiguous extent per admitted sequence).

No model: the real `Scheduler` and `BlockManager` are driven with synthetic tokens. Every request
has a `prompt_tokens` prompt and max_tokens `max_tokens` but stops after `output_tokens` (as a
chat reply stops at EOS long before its limit). Paged: the peak number of sequences running at
once, and the mean number running per step while requests were still queued (the steady state:
the peak briefly holds sequences that are preempted again as their outputs grow). Reserved: `budget // (prompt_tokens + max_tokens - 1)`, exactly what a
reservation of every sequence's worst case admits."""

from __future__ import annotations

from dataclasses import dataclass

from dvd.types import SamplingParams
from language_service.engine.block_manager import BlockManager
from language_service.engine.scheduler import Scheduler
from language_service.engine.sequence import Sequence


@dataclass(frozen=True)
class KvCapacity:
    budget_tokens: int
    block_size: int
    paged_peak: int
    paged_mean: float  # mean running per step while the queue was non-empty
    reserved: int
    num_preemptions: int

    @property
    def ratio(self) -> float:
        """Steady-state paged concurrency over the reserved one."""
        return self.paged_mean / max(self.reserved, 1)


def _advance(scheduler: Scheduler, batch, output_tokens: int) -> None:
    """The engine's postprocess, with token 1 sampled and a stop after `output_tokens`."""
    for chunk in batch.prefill:
        chunk.seq.num_cached_tokens = chunk.end
        if chunk.samples:
            chunk.seq.output_ids.append(1)
    for seq in batch.decode:
        sampled = seq.samples_next
        seq.num_cached_tokens += 1
        if sampled:
            seq.output_ids.append(1)
    for seq in [s for s in scheduler.running if len(s.output_ids) >= output_tokens]:
        scheduler.finish(seq)


def kv_capacity(budget_tokens: int = 65536, prompt_tokens: int = 170, max_tokens: int = 2048,
                output_tokens: int = 64, block_size: int = 16, num_requests: int = 1000) -> KvCapacity:
    blocks = BlockManager(budget_tokens // block_size, block_size)
    scheduler = Scheduler(num_requests, num_requests, blocks, 1 << 30)
    seqs = [Sequence(request_id=f"kv{i}", prompt_ids=[1] * prompt_tokens, image_features=None,
                     sampling=SamplingParams(), max_tokens=max_tokens, detokenizer=None, emit=lambda _: None)
            for i in range(num_requests)]
    for seq in seqs:
        scheduler.add(seq)
    saturated: list[int] = []
    while scheduler.has_work():
        batch = scheduler.schedule()
        if scheduler.waiting:
            saturated.append(len(scheduler.running))
        _advance(scheduler, batch, output_tokens)
    return KvCapacity(budget_tokens, block_size, max(saturated, default=0), sum(saturated) / max(len(saturated), 1),
                      budget_tokens // (prompt_tokens + max_tokens - 1), sum(s.num_preemptions for s in seqs))
