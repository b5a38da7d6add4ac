"""The default (fast) path: batched decode (one attention call per layer per step) and packed
prefill change the floating-point summation order, so batched outputs are not bit-identical to
solo ones. What holds instead, CPU fp32, real tiny and small models:

- a row's logits in a crowd are within `LOGIT_BOUND` of its solo logits (while their tokens agree);
- greedy tokens equal the solo tokens wherever the solo top-2 logit margin exceeds the bound: a
  batched run may only diverge at a step where the two best tokens were within the bound.

(Batch-invariant mode keeps bit-exactness: test_engine_batching.py.)"""

from __future__ import annotations

import warnings

import torch

from language_service.engine.forward import cache_kwarg
from tests.language_service.conftest import drive
from tests.language_service.test_engine_batching import _staggered, recording

LOGIT_BOUND = 1e-3  # absolute; observed max 2.4e-5 (tiny) and 4.3e-5 (small) on STAGGERED, fused layers


def _check_against_solo(kit, limits: dict, solo_limits: dict | None = None) -> int:
    """Runs STAGGERED in a crowd (engine built with `limits`) and each alone (`solo_limits`, default
    the same), fast path; returns how many steps were compared."""
    crowd_engine = recording(kit.engine(**limits))
    arrivals, crowd = _staggered(kit, "batch-")
    drive(crowd_engine, arrivals)
    solo_engine = recording(kit.engine(**(limits if solo_limits is None else solo_limits)))
    compared = 0
    for request, alone in zip(crowd, _staggered(kit, "solo-")[1]):
        drive(solo_engine, {0: [alone]})
        key = request.seq.request_id.split("-")[-1]
        for step, (a, b) in enumerate(zip(solo_engine.runner.logits[key], crowd_engine.runner.logits[key])):
            if request.token_ids[:step + 1] != alone.token_ids[:step + 1]:
                break  # fed different tokens from here on: nothing left to compare
            assert (a - b).abs().max() <= LOGIT_BOUND, f"{key} step {step}: logits moved {(a - b).abs().max()}"
            compared += 1
        _assert_tokens_within_margin(alone, request, solo_engine.runner.logits[key])
    return compared


def _assert_tokens_within_margin(alone, crowd, solo_logits: list[torch.Tensor]) -> None:
    for i, (a, b) in enumerate(zip(alone.token_ids, crowd.token_ids)):
        if a != b:
            # decode logits at step i - 1 chose token i (token 0 comes from the prefill)
            top2 = solo_logits[i - 1].topk(2).values if i else None
            assert top2 is not None and top2[0] - top2[1] <= LOGIT_BOUND, \
                f"{crowd.seq.request_id} diverged at token {i} with a clear margin"
            return
    assert crowd.token_ids == alone.token_ids


def test_batched_logits_within_bound_of_solo(kit):
    assert _check_against_solo(kit, dict(max_prefill_tokens=192)) > 100


def _first_logits(kit, requests) -> torch.Tensor:
    """Logits [prompts, vocab] that sample each prompt's first token, all prompts in one step."""
    engine = kit.engine(max_prefill_tokens=4096)
    for request in requests:
        engine.scheduler.add(request.seq)
    batch = engine.scheduler.schedule()
    assert len(batch.prefill) == len(requests), "every prompt should be packed into the step"
    with torch.inference_mode():
        return engine.runner._prefill_packed(batch.prefill)


def test_packed_prefill_within_bound_of_solo(small_kit):
    """Several prompts, with images, in one forward: each gets its solo logits within the bound."""
    crowd = _first_logits(small_kit, _staggered(small_kit, "p-")[1])
    for row, alone in zip(crowd, _staggered(small_kit, "s-")[1]):
        assert (row - _first_logits(small_kit, [alone])[0]).abs().max() <= LOGIT_BOUND


def test_one_attention_call_per_layer_per_decode_step(small_kit):
    engine = small_kit.engine()
    requests = [small_kit.request(f"r{i}", f"prompt number {i} " * (i + 1), 8) for i in range(6)]
    drive(engine, {0: requests}, max_steps=1)  # all prefilled (packed): the next step is decode only
    planner, calls = engine.runner.planner, []
    kernel = planner.kernel
    planner.kernel = lambda *args: calls.append(args[0].shape) or kernel(*args)
    engine.step()
    assert len(calls) == small_kit.model.config.num_hidden_layers
    assert all(shape[0] == 6 for shape in calls)  # every row in each call


def test_the_cache_argument_follows_the_installed_transformers(tiny_kit):
    """5.24 renamed the layers' `past_key_values` to `cache` (the old name warns until 5.40);
    the engine passes whichever the installed layers take, and a step raises no deprecation."""

    class OldLayer(torch.nn.Module):
        def forward(self, hidden_states, past_key_values=None, **kwargs):
            return hidden_states

    assert cache_kwarg(OldLayer()) == "past_key_values"
    layer = tiny_kit.model.model.layers[0]
    assert cache_kwarg(layer) in ("cache", "past_key_values")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drive(tiny_kit.engine(), {0: [tiny_kit.request("w", "no warnings please", 3)]})
