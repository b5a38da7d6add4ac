"""Per-request sampling and stopping: seeded sampling reproduces (alone and in a batch), and
stop strings, stop token ids, EOS and max_tokens end a sequence with the right reason."""

from __future__ import annotations

from dvd.types import FinishReason, SamplingParams
from tests.language_service.conftest import drive, run_alone

PROMPT = "Once upon a time, by the grey northern sea,"


def _sampled(kit, request_id: str, seed: int, **extra):
    sampling = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=seed, ignore_eos=True, **extra)
    return kit.request(request_id, PROMPT, 24, sampling=sampling)


def test_seeded_sampling_reproduces_run_to_run_and_in_a_batch(kit):
    first = run_alone(kit, _sampled(kit, "a", seed=7))
    again = run_alone(kit, _sampled(kit, "b", seed=7))
    other = run_alone(kit, _sampled(kit, "c", seed=8))
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    crowd = [_sampled(kit, "d", seed=7), _sampled(kit, "e", seed=8), kit.request("f", "Another prompt entirely", 30)]
    drive(kit.engine(), {0: crowd[2:], 1: crowd[:1], 3: crowd[1:2]})
    assert crowd[0].token_ids == first.token_ids
    assert crowd[1].token_ids == other.token_ids


def test_greedy_ignores_the_seed(tiny_kit):
    a = run_alone(tiny_kit, tiny_kit.request("a", PROMPT, 10, SamplingParams(seed=1, ignore_eos=True)))
    b = run_alone(tiny_kit, tiny_kit.request("b", PROMPT, 10, SamplingParams(seed=2, ignore_eos=True)))
    assert a.token_ids == b.token_ids


def test_max_tokens_ends_with_length(tiny_kit):
    request = run_alone(tiny_kit, tiny_kit.request("len", PROMPT, 7))
    assert len(request.token_ids) == 7 and request.finish_reason is FinishReason.LENGTH
    final = request.deltas[-1]
    assert final.usage.completion_tokens == 7 and final.usage.prompt_tokens == request.seq.num_prompt_tokens


def test_stop_token_id_ends_with_stop_at_its_first_occurrence(tiny_kit):
    free = run_alone(tiny_kit, tiny_kit.request("free", PROMPT, 20)).token_ids
    stop_id = free[6]
    cut = free.index(stop_id)
    request = run_alone(tiny_kit, tiny_kit.request(
        "stop-id", PROMPT, 20, SamplingParams(stop_token_ids=(stop_id,), ignore_eos=True)))
    assert request.token_ids == free[:cut + 1]  # the stop token is reported, as generate does
    assert request.finish_reason is FinishReason.STOP


def test_eos_stops_unless_ignored(tiny_kit):
    free = run_alone(tiny_kit, tiny_kit.request("free", PROMPT, 20)).token_ids
    eos = free[4]
    stopped = tiny_kit.request("eos", PROMPT, 20, SamplingParams())
    drive(tiny_kit.engine(eos={eos}), {0: [stopped]})
    assert stopped.token_ids == free[:free.index(eos) + 1] and stopped.finish_reason is FinishReason.STOP
    ignored = tiny_kit.request("ignored", PROMPT, 20, SamplingParams(ignore_eos=True))
    drive(tiny_kit.engine(eos={eos}), {0: [ignored]})
    assert ignored.token_ids == free and ignored.finish_reason is FinishReason.LENGTH


def test_stop_string_cuts_the_text_before_it(tiny_kit):
    free = run_alone(tiny_kit, tiny_kit.request("free", PROMPT, 30))
    text = free.text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    request = run_alone(tiny_kit, tiny_kit.request("stop", PROMPT, 30, SamplingParams(stop=(stop,), ignore_eos=True)))
    assert request.finish_reason is FinishReason.STOP
    assert request.text == text[: text.index(stop)]
    assert len(request.token_ids) < len(free.token_ids)


def test_greedy_picks_what_argmax_picks_ties_and_nan_included():
    """`generate` takes argmax; the sampler's cheaper `max(-1).indices` must pick the same token:
    the first of tied maxima wherever they sit in the row, and a NaN row's NaN."""
    import torch

    from language_service.engine.sampler import SamplingBatch, sample

    logits = torch.randn(6, 4160, generator=torch.Generator().manual_seed(0))
    logits[0, [17, 18]] = 9.0  # adjacent
    logits[1, [0, 4159]] = 9.0  # both ends
    logits[2, [31, 32, 2048, 4095]] = 9.0  # across vector lanes and chunk edges
    logits[3] = 0.0  # all tied
    logits[4, [100, 3000]] = float("nan")
    batch = SamplingBatch([True] * 6, [1.0] * 6, [0] * 6, [1.0] * 6, [None] * 6)
    assert sample(logits, batch) == logits.argmax(-1).tolist() == [17, 0, 31, 0, 100, int(logits[5].argmax())]
