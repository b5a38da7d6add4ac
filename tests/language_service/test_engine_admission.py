"""Admission and memory: the running cap and the KV budget hold, the queue is bounded, an abort
frees its KV blocks at the next step and the freed room admits waiting requests; when blocks run
out the newest sequences are preempted and recomputed, with the same tokens; the engine's
metrics count what happened."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from dvd.errors import InvalidRequest, ResourceExhausted
from dvd.types import FinishReason
from language_service.engine.sequence import Status
from tests.language_service.conftest import drive


def _long(kit, name: str, max_tokens: int = 400):
    return kit.request(name, f"{name}: keep talking about the sea", max_tokens)


def test_abort_frees_the_slot_and_admits_the_waiting(tiny_kit):
    engine = tiny_kit.engine(max_running_seqs=2)
    requests = [_long(tiny_kit, f"r{i}") for i in range(4)]
    drive(engine, {0: requests}, max_steps=5)
    assert [r.seq.status for r in requests] == [Status.RUNNING] * 2 + [Status.WAITING] * 2
    streamed = len(requests[0].token_ids)
    assert streamed >= 3
    assert engine.abort("r0") and engine.abort("r1")
    assert not engine.abort("nobody")
    engine.step()
    assert [r.finish_reason for r in requests[:2]] == [FinishReason.ABORT] * 2
    assert len(requests[0].token_ids) == streamed  # nothing after the abort
    assert [r.seq.status for r in requests[2:]] == [Status.RUNNING] * 2
    blocks = engine.scheduler.blocks
    assert blocks.num_used == sum(len(r.seq.block_table) for r in requests[2:])
    assert requests[0].seq.block_table == [] and requests[1].seq.block_table == []
    drive(engine, {})
    assert [r.finish_reason for r in requests[2:]] == [FinishReason.LENGTH] * 2
    assert blocks.num_used == 0


def test_abort_of_a_waiting_request(tiny_kit):
    engine = tiny_kit.engine(max_running_seqs=1)
    running, waiting = _long(tiny_kit, "running", 5), _long(tiny_kit, "waiting")
    drive(engine, {0: [running, waiting]}, max_steps=1)
    engine.abort("waiting")
    drive(engine, {})
    assert waiting.finish_reason is FinishReason.ABORT and waiting.token_ids == []
    assert running.finish_reason is FinishReason.LENGTH


def test_queue_full_is_resource_exhausted(tiny_kit):
    registry = CollectorRegistry()
    engine = tiny_kit.engine(max_running_seqs=1, max_waiting_seqs=2, registry=registry)
    drive(engine, {0: [_long(tiny_kit, "running")]}, max_steps=1)
    engine.submit(_long(tiny_kit, "w1").seq)
    engine.submit(_long(tiny_kit, "w2").seq)
    with pytest.raises(ResourceExhausted):
        engine.submit(_long(tiny_kit, "w3").seq)
    assert registry.get_sample_value("dvd:language_requests_rejected_total") == 1


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_kv_budget_preempts_and_recomputes_the_same_tokens(tiny_kit, batch_invariant):
    """A budget that holds every prompt but not every full output: admission by free blocks lets
    all five in, the newest are preempted as blocks run out, and each finishes with the tokens it
    gets alone (batch-invariant mode replays its output so its cache is rebuilt bit for bit; the
    fast path re-prefills it, within float tolerance of the solo run's arithmetic)."""
    budget = 160
    engine = tiny_kit.engine(max_kv_tokens=budget, max_model_len=budget, batch_invariant=batch_invariant)
    requests = [tiny_kit.request(f"kv{i}", f"request {i} about ships", 50) for i in range(5)]
    assert 2 * requests[0].seq.max_kv_tokens <= budget < 3 * requests[0].seq.max_kv_tokens
    assert engine.runner.kv.kv.shape[2] == budget + 16  # the cache is the budget (+1 scratch block), nothing more
    for request in requests:
        engine.submit(request.seq)
    peak = 0
    while engine.has_work():
        engine.step()
        assert engine.scheduler.blocks.num_used * 16 <= budget
        peak = max(peak, len(engine.scheduler.running))
    assert peak == 5, "paged admission admits by the prompt's blocks, not prompt + max_tokens"
    assert sum(r.seq.num_preemptions for r in requests) > 0
    assert all(r.finish_reason is FinishReason.LENGTH and len(r.token_ids) == 50 for r in requests)
    assert engine.scheduler.blocks.num_used == 0
    for i, request in enumerate(requests):
        alone = tiny_kit.request(f"alone{i}", f"request {i} about ships", 50)
        drive(tiny_kit.engine(batch_invariant=batch_invariant), {0: [alone]})
        assert request.token_ids == alone.token_ids, f"request {i} changed after preemption"


def test_a_request_larger_than_the_budget_is_refused(tiny_kit):
    engine = tiny_kit.engine(max_kv_tokens=64, max_model_len=64)
    with pytest.raises(InvalidRequest):
        engine.submit(tiny_kit.request("huge", "word " * 40, 40).seq)


def test_metrics_count_tokens_load_and_steps(tiny_kit):
    registry = CollectorRegistry()
    engine = tiny_kit.engine(max_running_seqs=2, registry=registry)
    requests = [tiny_kit.request(f"m{i}", f"metrics request {i}", 5 + i) for i in range(3)]
    steps = drive(engine, {0: requests[:2], 2: requests[2:]})

    def value(name: str, **labels) -> float:
        return registry.get_sample_value(name, labels)

    assert value("dvd:language_step_seconds_count") == steps
    assert value("dvd:language_prefill_tokens_total") == sum(r.seq.num_prompt_tokens for r in requests)
    # the first token of each request comes from its prefill, the rest from decode steps
    assert value("dvd:language_decode_tokens_total") == sum(r.seq.max_tokens - 1 for r in requests)
    assert value("dvd:language_requests_finished_total", finish_reason="length") == 3
    for gauge in ("running_seqs", "waiting_seqs", "queue_depth", "kv_usage_ratio"):
        assert value(f"dvd:language_{gauge}") == 0


def test_load_gauges_while_busy(tiny_kit):
    registry = CollectorRegistry()
    engine = tiny_kit.engine(max_running_seqs=1, max_kv_tokens=1000, max_model_len=1000, registry=registry)
    requests = [_long(tiny_kit, f"g{i}", 50) for i in range(3)]
    drive(engine, {0: requests}, max_steps=1)
    assert registry.get_sample_value("dvd:language_running_seqs") == 1
    assert registry.get_sample_value("dvd:language_waiting_seqs") == 2
    assert registry.get_sample_value("dvd:language_queue_depth") == 3
    blocks = -(-requests[0].seq.num_tokens // 16)
    assert registry.get_sample_value("dvd:language_kv_usage_ratio") == blocks / (1000 // 16)
