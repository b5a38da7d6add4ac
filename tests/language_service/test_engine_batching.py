"""Batch-invariant mode: continuous batching is invisible in the outputs, bit for bit. A
request's greedy tokens (and logits) are the same whether it runs alone or joins a crowd
mid-flight, prefilled whole or in chunks (CPU fp32, the real tiny and small models). The fast
path's tolerance-based counterparts are in test_engine_fast_path.py."""

from __future__ import annotations

import pytest
import torch

from dvd.types import FinishReason
from language_service.model import build_language_model
from tests.language_service.conftest import drive, run_alone

# (arrival step, prompt repeats, image tokens, max_tokens): different lengths, images and budgets
STAGGERED = [(0, 1, 0, 24), (0, 6, 256, 9), (1, 3, 0, 31), (2, 12, 64, 17),
             (4, 2, 0, 40), (5, 9, 320, 12), (9, 4, 0, 27), (14, 1, 128, 20)]


def _staggered(kit, prefix: str) -> tuple[dict[int, list], list]:
    arrivals, requests = {}, []
    for i, (step, repeats, image_tokens, max_tokens) in enumerate(STAGGERED):
        text = f"Request {i}: " + "tell me about the sea and the lighthouse " * repeats
        request = kit.request(f"{prefix}{i}", text, max_tokens, num_image_tokens=image_tokens, image_seed=i)
        arrivals.setdefault(step, []).append(request)
        requests.append(request)
    return arrivals, requests


def test_staggered_batch_equals_solo_runs(kit):
    limits = dict(max_prefill_tokens=192, batch_invariant=True)  # long image prompts prefill in chunks while others decode
    arrivals, batched = _staggered(kit, "batch-")
    engine = kit.engine(**limits)
    peak = 0
    for step in range(10_000):
        for request in arrivals.get(step, []):
            engine.submit(request.seq)
        if not engine.has_work() and step > max(arrivals):
            break
        engine.step()
        peak = max(peak, len(engine.scheduler.running))
    assert peak >= 6, f"the requests barely overlapped (peak {peak} running)"
    _, solo = _staggered(kit, "solo-")
    for alone, crowd in zip(solo, batched):
        run_alone(kit, alone, **limits)
        assert crowd.finish_reason is FinishReason.LENGTH and len(crowd.token_ids) == crowd.seq.max_tokens
        assert crowd.token_ids == alone.token_ids, f"{crowd.seq.request_id} differs in the batch"
        assert crowd.text == alone.text
    assert len({tuple(r.token_ids) for r in batched}) == len(batched), "outputs collide: equality is vacuous"


def recording(engine):
    """Makes the engine's runner keep every decode row's logits, by request id."""
    runner, decode = engine.runner, engine.runner._decode
    runner.logits = {}

    def record(seqs):
        logits = decode(seqs)
        for seq, row in zip(seqs, logits):
            runner.logits.setdefault(seq.request_id.split("-")[-1], []).append(row.clone())
        return logits

    runner._decode = record
    return engine


def test_decode_logits_are_bit_identical_at_any_batch_size(small_kit):
    """Stronger than token equality: padding decode batches to full BLAS row tiles and attending
    per row make a row's arithmetic independent of its neighbours (see runner.py)."""
    def engine():
        return recording(small_kit.engine(batch_invariant=True))

    crowd_engine = engine()
    arrivals, _ = _staggered(small_kit, "batch-")
    drive(crowd_engine, arrivals)
    solo_engine = engine()
    for request in _staggered(small_kit, "solo-")[1]:
        drive(solo_engine, {0: [request]})
    for key, rows in solo_engine.runner.logits.items():
        crowd_rows = crowd_engine.runner.logits[key]
        assert len(rows) == len(crowd_rows)
        assert all(torch.equal(a, b) for a, b in zip(rows, crowd_rows)), f"request {key}: logits differ"


def test_rows_in_lockstep_stay_bit_identical(small_kit):
    """Rows in lockstep (same prompt length, so the same number of keys at every step: the case
    where batching attention across rows is tempting, and where torch's CPU SDPA splits its work
    differently for a batch than for one row) keep their solo logits bit for bit."""
    def engine():
        return recording(small_kit.engine(batch_invariant=True))

    def requests(prefix):
        return [small_kit.request(f"{prefix}{i}", "What is in this image?", 12, num_image_tokens=64, image_seed=i)
                for i in range(6)]

    crowd = requests("crowd-")
    assert len({len(r.seq.prompt_ids) for r in crowd}) == 1
    crowd_engine = engine()
    drive(crowd_engine, {0: crowd})
    solo_engine = engine()
    for request in requests("solo-"):
        drive(solo_engine, {0: [request]})
    for key, rows in solo_engine.runner.logits.items():
        assert all(torch.equal(a, b) for a, b in zip(rows, crowd_engine.runner.logits[key], strict=True)), key
    assert len({tuple(r.token_ids) for r in crowd}) > 1, "outputs collide: equality is vacuous"


@pytest.mark.parametrize("chunk", [64, 100])
def test_chunked_prefill_equals_unchunked(kit, chunk):
    text = "Describe the picture: " + "waves, rocks and a red light " * 6
    whole = run_alone(kit, kit.request("whole", text, 16, num_image_tokens=512, image_seed=3), max_prefill_tokens=2048)
    pieces = run_alone(kit, kit.request("pieces", text, 16, num_image_tokens=512, image_seed=3),
                       max_prefill_tokens=chunk)
    assert pieces.token_ids == whole.token_ids


def test_decodes_keep_flowing_while_a_long_prompt_prefills(tiny_kit):
    """Both modes chunk alike; the fast path packs the chunk and the decodes' step together."""
    engine = tiny_kit.engine(max_prefill_tokens=128)
    short = tiny_kit.request("short", "hello there", 64)
    long = tiny_kit.request("long", "look at this: " * 4, 8, num_image_tokens=1024)
    drive(engine, {0: [short]}, max_steps=2)  # short is decoding
    engine.submit(long.seq)
    chunks = 0
    while long.seq.is_prefilling or long.seq.num_cached_tokens == 0:
        before = len(short.token_ids)
        engine.step()
        chunks += 1
        assert len(short.token_ids) == before + 1, "a decode step was skipped during the chunked prefill"
    assert chunks == -(-long.seq.num_prompt_tokens // 128)


def test_solo_engine_equals_transformers_generate(tiny_ckpt, tiny_kit):
    """The runner's prefill and decode reproduce `generate` on the same inputs_embeds."""
    request = run_alone(tiny_kit, tiny_kit.request("ref", "An image: and a question?", 12, num_image_tokens=64,
                                                   image_seed=5))
    model = build_language_model(tiny_ckpt, dtype=torch.float32, device="cpu", attn_implementation="sdpa")
    ids = torch.tensor([request.seq.prompt_ids])
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter((ids == tiny_kit.image_token_id)[..., None], request.seq.image_features)
        out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                             min_new_tokens=12, do_sample=False)
    assert request.token_ids == out[0].tolist()
