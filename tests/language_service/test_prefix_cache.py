"""Prefix caching: full KV blocks registered under their content hash, reused by later sequences
with the same prefix (same tenant scope, tokens and image features), reference-counted, evicted
least recently released first, and counted as free room.

The bookkeeping tests drive the block manager and scheduler alone (no model); the engine tests
run the real tiny model and check that a cached prefix changes only how much is prefilled: the
tokens stay within the fast path's bound of a full prefill (test_engine_fast_path.py)."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry

from dvd.types import SamplingParams
from language_service.engine.block_manager import BlockManager
from language_service.engine.scheduler import Scheduler
from language_service.engine.sequence import Sequence, Status, features_digest
from tests.language_service.conftest import drive, run_alone
from tests.language_service.test_engine_batching import recording
from tests.language_service.test_engine_fast_path import _assert_tokens_within_margin

BLOCK = 16


def seq(tokens: list[int], scope: str = "", features: torch.Tensor | None = None,
        image_keys: tuple = (), name: str = "s") -> Sequence:
    return Sequence(request_id=name, prompt_ids=list(tokens), image_features=features,
                    sampling=SamplingParams(max_tokens=4), max_tokens=4,
                    detokenizer=None, emit=lambda d: None, cache_scope=scope,
                    image_keys=image_keys)


def prefilled(blocks: BlockManager, s: Sequence) -> Sequence:
    """Admit `s` and pretend its prompt was prefilled: every prompt slot written, then committed."""
    assert blocks.admit(s, s.num_prefill)
    s.num_cached_tokens = s.num_prefill
    blocks.commit(s)
    return s


PROMPT = list(range(100, 150))  # 50 tokens: 3 full blocks and 2 positions of a fourth


def test_a_repeated_prompt_reuses_its_full_blocks_but_always_prefills_the_last_position():
    blocks = BlockManager(16, BLOCK, prefix_caching=True)
    first = prefilled(blocks, seq(PROMPT))
    second = seq(PROMPT)
    assert blocks.admit(second, second.num_prefill)
    assert second.block_table[:3] == first.block_table[:3] and second.block_table[3] != first.block_table[3]
    assert second.num_cached_tokens == 48 and second.is_prefilling  # positions 48, 49 still run
    exact = seq(PROMPT[:48])  # a prompt of exactly three blocks: its last block is recomputed
    assert blocks.admit(exact, 48) and exact.num_cached_tokens == 32
    assert (blocks.hit_tokens, blocks.queried_tokens) == (48 + 32, 50 + 50 + 48)


def test_shared_blocks_are_reference_counted_and_stay_cached_after_release():
    blocks = BlockManager(8, BLOCK, prefix_caching=True)
    first = prefilled(blocks, seq(PROMPT))
    shared = first.block_table[:3]
    second = prefilled(blocks, seq(PROMPT))
    assert blocks.num_free == 8 - 5  # 3 shared + one private tail each
    blocks.free(first)
    assert blocks.num_free == 8 - 4  # the shared three are still held by `second`
    blocks.free(second)
    assert blocks.num_free == 8 and blocks.usage == 0 and blocks.num_cached == 3
    third = seq(PROMPT)
    assert blocks.admit(third, 50) and third.block_table[:3] == shared


def test_different_scopes_tokens_or_images_do_not_share():
    blocks = BlockManager(32, BLOCK, prefix_caching=True)
    prefilled(blocks, seq(PROMPT, scope="tenant-a"))
    other_tenant = seq(PROMPT, scope="tenant-b")
    assert blocks.admit(other_tenant, 50) and other_tenant.num_cached_tokens == 0
    diverging = seq(PROMPT[:20] + [7] * 30, scope="tenant-a")  # same first block, then different
    assert blocks.admit(diverging, 50) and diverging.num_cached_tokens == BLOCK

    image_a, image_b = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), torch.randn(4, 8)
    key_a, key_b = features_digest(image_a), features_digest(image_b)
    prefilled(blocks, seq(PROMPT, features=image_a, image_keys=((20, key_a),)))
    same_image = seq(PROMPT, features=image_a.clone(), image_keys=((20, features_digest(image_a.clone())),))
    assert blocks.admit(same_image, 50) and same_image.num_cached_tokens == 48
    other_image = seq(PROMPT, features=image_b, image_keys=((20, key_b),))
    assert blocks.admit(other_image, 50)
    assert other_image.num_cached_tokens == BLOCK  # only the block before the one the image starts in


def test_a_second_image_keeps_the_first_images_blocks_shareable():
    """Turn 2 of a chat adds an image: the blocks up to where it starts are turn 1's."""
    blocks = BlockManager(32, BLOCK, prefix_caching=True)
    key_a, key_b, key_c = (features_digest(torch.full((2, 2), float(i))) for i in range(3))
    tokens = list(range(200, 280))  # 80 positions; images start at 20 and 50
    prefilled(blocks, seq(tokens, features=torch.zeros(2, 2), image_keys=((20, key_a), (50, key_b))))
    third = seq(tokens, features=torch.zeros(2, 2), image_keys=((20, key_a), (50, key_c)))
    assert blocks.admit(third, 80) and third.num_cached_tokens == 48  # blocks 0-2; block 3 holds position 50
    first_only = seq(tokens, features=torch.zeros(2, 2), image_keys=((20, key_b),))
    assert blocks.admit(first_only, 80) and first_only.num_cached_tokens == BLOCK


def test_every_sequence_with_images_hashes_them_even_when_the_caller_gives_no_digest():
    features = torch.randn(4, 8)
    assert seq(PROMPT, features=features).image_keys == ((0, features_digest(features)),)
    assert features_digest(features) != features_digest(features.to(torch.bfloat16))


def test_released_cached_blocks_are_free_room_evicted_oldest_first():
    blocks = BlockManager(6, BLOCK, prefix_caching=True)
    old = prefilled(blocks, seq(list(range(33))))  # blocks 0-2 (two full, committed)
    blocks.free(old)
    new = prefilled(blocks, seq(list(range(500, 570))))  # 5 blocks: the 4 plain free ones, then an eviction
    blocks.free(new)
    assert blocks.num_cached == 1 + 4  # one of `old`'s two cached blocks made room for `new`'s
    again = seq(list(range(33)))
    assert blocks.admit(again, 33) and again.num_cached_tokens == BLOCK  # its deeper block was evicted first


def test_admission_counts_the_cached_blocks_it_takes_against_free_room():
    blocks = BlockManager(4, BLOCK, prefix_caching=True)
    blocks.free(prefilled(blocks, seq(PROMPT[:48])))  # 3 cached-and-released blocks + 1 plain free one
    longer = seq(PROMPT[:48] + [1] * 16)  # 64 tokens: its three cached blocks and one new one
    assert blocks.admit(longer, 64, reserve=0) and longer.num_cached_tokens == 48 and blocks.num_free == 0
    blocks.free(longer)
    tight = seq(PROMPT[:48] + [1] * 16)
    assert not blocks.admit(tight, 64, reserve=1)  # reserve untouched: nothing taken
    assert tight.block_table == [] and blocks.num_free == 4


def test_off_means_no_sharing():
    blocks = BlockManager(16, BLOCK, prefix_caching=False)
    prefilled(blocks, seq(PROMPT))
    again = seq(PROMPT)
    assert blocks.admit(again, 50) and again.num_cached_tokens == 0 and blocks.num_cached == 0


def test_a_preempted_sequence_finds_its_own_blocks_when_readmitted():
    blocks = BlockManager(8, BLOCK, prefix_caching=True)
    scheduler = Scheduler(4, 8, blocks, max_prefill_tokens=64)
    s = seq(PROMPT)
    scheduler.add(s)
    scheduler.schedule()
    s.num_cached_tokens = 50
    blocks.commit(s)
    table = list(s.block_table)
    scheduler._preempt(s)
    assert s.status is Status.WAITING and s.block_table == []
    batch = scheduler.schedule()
    assert s.block_table[:3] == table[:3] and batch.num_cached_prompt_tokens == 48
    assert [(c.start, c.end) for c in batch.prefill] == [(48, 50)]


# The engine, real tiny model.


def test_a_repeated_prompt_prefills_only_its_tail_and_gives_the_same_tokens(tiny_kit):
    registry = CollectorRegistry()
    engine = recording(tiny_kit.engine(registry=registry))
    text = "Describe the picture in detail, please, with every object you can see in it."
    first = tiny_kit.request("first", text, 24, num_image_tokens=40, image_seed=3)
    drive(engine, {0: [first]})
    prefilled_first = registry.get_sample_value("dvd:language_prefill_tokens_total")
    second = tiny_kit.request("second", text, 24, num_image_tokens=40, image_seed=3)
    drive(engine, {0: [second]})
    cached = registry.get_sample_value("dvd:language_prefix_cache_hit_tokens_total")
    length = first.seq.num_prompt_tokens
    assert cached == (length - 1) // BLOCK * BLOCK > 0
    assert registry.get_sample_value("dvd:language_prefill_tokens_total") - prefilled_first == length - cached
    _assert_tokens_within_margin(first, second, engine.runner.logits["first"])
    assert engine.scheduler.blocks.usage == 0  # everything released; the prefix stays cached
    assert registry.get_sample_value("dvd:language_prefix_cache_blocks") == engine.scheduler.blocks.num_cached > 3


def test_a_different_image_behind_the_same_text_is_not_reused(tiny_kit):
    engine = tiny_kit.engine()
    text = "What is in this image? Answer in one long sentence, mentioning colours and shapes."
    drive(engine, {0: [tiny_kit.request("a", text, 4, num_image_tokens=40, image_seed=1)]})
    other = tiny_kit.request("b", text, 4, num_image_tokens=40, image_seed=2)
    drive(engine, {0: [other]})
    assert engine.scheduler.blocks.hit_tokens == 0  # the image is in block 0: every block differs
    alone = run_alone(tiny_kit, tiny_kit.request("b", text, 4, num_image_tokens=40, image_seed=2))
    assert other.token_ids == alone.token_ids  # nothing of image 1's KV leaked in: a full, solo prefill


def test_multi_turn_reuses_the_previous_turns_blocks(tiny_kit):
    engine = tiny_kit.engine()
    turn1 = tiny_kit.request("t1", "The first question of a long conversation about many things.", 20)
    drive(engine, {0: [turn1]})
    history = turn1.seq.prompt_ids + turn1.token_ids
    turn2 = tiny_kit.request("t2", "x", 8)
    turn2.seq.prompt_ids = history + tiny_kit.tokenizer.encode(" And a follow-up question.")
    turn2.seq.num_prefill = turn2.seq.num_prompt_tokens
    drive(engine, {0: [turn2]})
    # every full block of turn 1's prompt and reply: a decode step commits the block it fills
    assert engine.scheduler.blocks.hit_tokens == (len(history) - 1) // BLOCK * BLOCK > turn1.seq.num_prompt_tokens


@pytest.mark.parametrize("flag", ["batch_invariant", "off"])
def test_batch_invariant_mode_and_the_flag_turn_it_off(tiny_kit, flag):
    engine = tiny_kit.engine(**({"batch_invariant": True} if flag == "batch_invariant" else {"prefix_caching": False}))
    text = "The same prompt twice, long enough to fill at least two blocks of sixteen tokens each."
    for name in ("a", "b"):
        drive(engine, {0: [tiny_kit.request(name, text, 4)]})
    assert not engine.scheduler.blocks.prefix_caching and engine.scheduler.blocks.hit_tokens == 0


def test_cancelled_and_finished_sequences_release_every_reference(tiny_kit):
    engine = tiny_kit.engine(max_kv_tokens=1024, max_model_len=512)
    text = "A prompt shared by several requests at once, some of which are cancelled midway."
    requests = [tiny_kit.request(f"r{i}", text, 30) for i in range(4)]
    drive(engine, {0: requests[:2], 3: requests[2:]}, max_steps=6)
    engine.abort("r1")
    engine.abort("r3")
    drive(engine, {})
    blocks = engine.scheduler.blocks
    assert blocks.usage == 0 and blocks.num_free == blocks.num_blocks
    assert blocks.hit_tokens > 0  # the later two found the first two's prompt blocks


def test_the_language_core_keys_each_image_at_its_first_placeholder():
    from language_service.core import _run_starts

    ctx = 9
    assert _run_starts([1, 2, ctx, ctx, ctx, 3, 4, ctx, ctx, 5], ctx) == [2, 7]
    assert _run_starts([ctx, ctx, 1], ctx) == [0] and _run_starts([1, 2], ctx) == []


def test_shared_prefixes_under_preemption_finish_with_their_solo_tokens_and_leak_nothing(tiny_kit):
    """A budget too small for every full output: sequences sharing a prompt prefix are preempted
    and readmitted (finding their own and each other's blocks), all finish, every block comes
    back, and each one's tokens stay within the fast path's bound of its solo run."""
    shared = "A long shared instruction that every request in this test begins with, word for word. "
    budget = 256
    engine = tiny_kit.engine(max_kv_tokens=budget, max_model_len=budget)
    requests = [tiny_kit.request(f"p{i}", shared + f"Then question {i}.", 60) for i in range(5)]
    drive(engine, {0: requests[:3], 2: requests[3:]})
    blocks = engine.scheduler.blocks
    assert sum(r.seq.num_preemptions for r in requests) > 0 and blocks.hit_tokens > 0
    assert all(len(r.token_ids) == 60 for r in requests)
    assert blocks.num_free == blocks.num_blocks and blocks.usage == 0
    for i, request in enumerate(requests):
        solo_engine = recording(tiny_kit.engine(prefix_caching=False))
        alone = tiny_kit.request(f"alone-p{i}", shared + f"Then question {i}.", 60)
        drive(solo_engine, {0: [alone]})
        _assert_tokens_within_margin(alone, request, solo_engine.runner.logits[f"p{i}"])
