"""Scheduling policy without a model: FIFO admission under the running cap and the KV budget,
prompt chunks aligned to the prompt (never to the neighbours), decodes every step."""

from __future__ import annotations

import pytest

from dvd.errors import ResourceExhausted
from dvd.types import SamplingParams
from language_service.engine.scheduler import Scheduler
from language_service.engine.sequence import Sequence, Status


def _seq(name: str, prompt_tokens: int, max_tokens: int = 10) -> Sequence:
    return Sequence(request_id=name, prompt_ids=[1] * prompt_tokens, image_features=None,
                    sampling=SamplingParams(), max_tokens=max_tokens, detokenizer=None, emit=lambda d: None)


def _advance(batch) -> None:
    """What the engine's postprocess does to the bookkeeping."""
    for chunk in batch.prefill:
        chunk.seq.num_cached_tokens = chunk.end
    for seq in batch.decode:
        seq.num_cached_tokens += 1


def test_running_cap_and_fifo():
    s = Scheduler(max_running_seqs=2, max_waiting_seqs=8, max_kv_tokens=1000, max_prefill_tokens=100)
    seqs = [_seq(f"s{i}", 10) for i in range(3)]
    for seq in seqs:
        s.add(seq)
    batch = s.schedule()
    assert [c.seq for c in batch.prefill] == seqs[:2] and batch.decode == []
    assert seqs[2].status is Status.WAITING
    _advance(batch)
    batch = s.schedule()
    assert batch.decode == seqs[:2] and batch.prefill == []
    s.finish(seqs[0])
    batch = s.schedule()
    assert batch.decode == [seqs[1]] and [c.seq for c in batch.prefill] == [seqs[2]]


def test_kv_budget_holds_the_head_of_the_queue():
    s = Scheduler(max_running_seqs=8, max_waiting_seqs=8, max_kv_tokens=100, max_prefill_tokens=1000)
    big, small = _seq("big", 50, 20), _seq("small", 5, 5)  # needs 69 and 9 positions
    first = _seq("first", 40, 11)  # 50
    for seq in (first, big, small):
        s.add(seq)
    s.schedule()
    assert first.status is Status.RUNNING and big.status is Status.WAITING
    assert small.status is Status.WAITING, "FIFO: small must not overtake the blocked head"
    s.finish(first)
    s.schedule()
    assert big.status is Status.RUNNING and small.status is Status.RUNNING
    assert s.kv.num_used == big.max_kv_tokens + small.max_kv_tokens <= 100


def test_chunks_are_aligned_to_the_prompt_and_share_a_step_budget():
    s = Scheduler(max_running_seqs=8, max_waiting_seqs=8, max_kv_tokens=10_000, max_prefill_tokens=64)
    long, short = _seq("long", 150), _seq("short", 30)
    s.add(long)
    s.add(short)
    plans = []
    while long.is_prefilling or short.is_prefilling:
        batch = s.schedule()
        plans.append([(c.seq.request_id, c.start, c.num_tokens) for c in batch.prefill])
        _advance(batch)
    # long's chunks are [0,64) [64,128) [128,150) whatever runs beside it; short waits for budget
    assert plans == [[("long", 0, 64)], [("long", 64, 64)], [("long", 128, 22), ("short", 0, 30)]]


def test_queue_bound():
    s = Scheduler(max_running_seqs=1, max_waiting_seqs=1, max_kv_tokens=100, max_prefill_tokens=100)
    s.add(_seq("a", 5))
    with pytest.raises(ResourceExhausted):
        s.add(_seq("b", 5))
