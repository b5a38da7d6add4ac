"""Scheduling policy without a model: FIFO admission under the running cap and the free KV
blocks, blocks taken as tokens are produced, preemption of the newest sequence when blocks run
out, prompt chunks aligned to the prompt (never to the neighbours), decodes every step."""

from __future__ import annotations

import pytest

from dvd.errors import ResourceExhausted
from dvd.types import SamplingParams
from language_service.engine.block_manager import BlockManager
from language_service.engine.scheduler import Scheduler
from language_service.engine.sequence import Sequence, Status


def _seq(name: str, prompt_tokens: int, max_tokens: int = 10) -> Sequence:
    return Sequence(request_id=name, prompt_ids=[1] * prompt_tokens, image_features=None,
                    sampling=SamplingParams(), max_tokens=max_tokens, detokenizer=None, emit=lambda d: None)


def _scheduler(num_blocks: int = 1000, block_size: int = 1, running: int = 8, prefill: int = 1000,
               replay: bool = False) -> Scheduler:
    return Scheduler(running, 8, BlockManager(num_blocks, block_size), prefill, replay_outputs=replay)


def _advance(batch) -> None:
    """What the engine's postprocess does to the bookkeeping (decodes append token 7)."""
    for chunk in batch.prefill:
        chunk.seq.num_cached_tokens = chunk.end
        if chunk.samples:
            chunk.seq.output_ids.append(7)
    for seq in batch.decode:
        seq.num_cached_tokens += 1
        if seq.num_cached_tokens == seq.num_tokens:
            seq.output_ids.append(7)


def test_running_cap_and_fifo():
    s = _scheduler(running=2, prefill=100)
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


def test_admission_takes_blocks_for_the_prompt_not_the_worst_case():
    s = _scheduler(num_blocks=10, block_size=16)
    seqs = [_seq(f"s{i}", 40, max_tokens=100) for i in range(4)]  # 3 blocks of prompt, 9 at worst
    for seq in seqs:
        s.add(seq)
    s.schedule()
    assert [q.status for q in seqs] == [Status.RUNNING] * 3 + [Status.WAITING]
    assert s.blocks.num_used == 9 and all(len(q.block_table) == 3 for q in seqs[:3])


def test_blocks_grow_as_tokens_are_produced():
    s = _scheduler(num_blocks=10, block_size=4)
    seq = _seq("grow", 4, max_tokens=20)
    s.add(seq)
    tables = []
    for _ in range(8):
        batch = s.schedule()
        tables.append(len(seq.block_table))
        _advance(batch)
    # prompt: 1 block; decode feeds position 4 (a new block), 5, 6, 7, then 8 (another)
    assert tables == [1, 2, 2, 2, 2, 3, 3, 3]


def test_the_head_of_the_queue_is_not_overtaken():
    s = _scheduler(num_blocks=100)
    first, big, small = _seq("first", 60), _seq("big", 50), _seq("small", 5)
    for seq in (first, big, small):
        s.add(seq)
    s.schedule()
    assert first.status is Status.RUNNING and big.status is Status.WAITING
    assert small.status is Status.WAITING, "FIFO: small must not overtake the blocked head"
    s.finish(first)
    assert s.blocks.num_used == 0
    s.schedule()
    assert big.status is Status.RUNNING and small.status is Status.RUNNING


@pytest.mark.parametrize("replay", [False, True])
def test_out_of_blocks_preempts_the_newest_and_recomputes(replay):
    s = _scheduler(num_blocks=6, block_size=4, replay=replay)
    old, new = _seq("old", 8, max_tokens=16), _seq("new", 8, max_tokens=16)  # 2 blocks of prompt each
    s.add(old)
    s.add(new)
    for _ in range(5):  # prefill, then positions 8..11: 3 blocks each, the cache is full
        _advance(s.schedule())
    assert old.status is Status.RUNNING and new.status is Status.RUNNING
    batch = s.schedule()  # both cross into a 4th block: only one can
    assert batch.num_preempted == 1 and batch.decode == [old]
    assert new.status is Status.WAITING and new.block_table == [] and new.num_cached_tokens == 0
    assert s.waiting[0] is new and new.num_preemptions == 1
    # recompute: the fast path re-prefills everything but the last token; replay re-prefills the
    # prompt and feeds its output back through decode steps
    assert new.num_prefill == (8 if replay else new.num_tokens - 1)
    s.finish(old)
    batch = s.schedule()
    assert [(c.seq, c.start, c.end) for c in batch.prefill] == [(new, 0, new.num_prefill)]
    assert not batch.prefill[0].samples  # its next token is sampled by a decode step


def test_a_sequence_alone_that_outgrows_the_cache_preempts_itself():
    s = _scheduler(num_blocks=2, block_size=4)
    seq = _seq("alone", 8, max_tokens=1)
    s.add(seq)
    _advance(s.schedule())
    batch = s.schedule()
    assert batch.decode == [] and batch.num_preempted == 1 and s.blocks.num_used == 0


def test_chunks_are_aligned_to_the_prompt_and_share_a_step_budget():
    s = _scheduler(num_blocks=10_000, prefill=64)
    long, short = _seq("long", 150), _seq("short", 30)
    s.add(long)
    s.add(short)
    plans = []
    while long.is_prefilling or short.is_prefilling:
        batch = s.schedule()
        plans.append([(c.seq.request_id, c.start, c.num_tokens) for c in batch.prefill])
        for chunk in batch.prefill:
            chunk.seq.num_cached_tokens = chunk.end
    # long's chunks are [0,64) [64,128) [128,150) whatever runs beside it; short waits for budget
    assert plans == [[("long", 0, 64)], [("long", 64, 64)], [("long", 128, 22), ("short", 0, 30)]]


def test_queue_bound():
    s = Scheduler(1, 1, BlockManager(100, 1), 100)
    s.add(_seq("a", 5))
    with pytest.raises(ResourceExhausted):
        s.add(_seq("b", 5))
