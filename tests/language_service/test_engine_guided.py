"""Guided decoding and logprobs in the engine, on the random-init tiny model (whose free text is
noise, so only the grammar makes an answer valid): every json_schema answer parses and validates,
greedy and sampled, in one batch with unconstrained requests whose tokens stay those of their
solo runs; choice and regex outputs match; max_tokens inside the JSON ends with LENGTH; greedy
logprobs are log_softmax of an independent forward."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import torch

from dvd.errors import InvalidRequest
from dvd.types import FinishReason, GuidedDecoding, GuideKind, SamplingParams
from language_service.engine.grammars import GrammarCompiler
from language_service.engine.guided import unpack_bitmask
from language_service.model import build_language_model
from tests.language_service.conftest import drive, run_alone

PROMPT = "Read the form and answer in JSON:"
MAX_TOKENS = 96

SCHEMAS = {
    "nested objects": {
        "type": "object", "additionalProperties": False, "required": ["name", "address"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 8},
                       "address": {"type": "object", "additionalProperties": False, "required": ["city", "zip"],
                                   "properties": {"city": {"type": "string", "maxLength": 6},
                                                  "zip": {"type": "integer", "minimum": 1000, "maximum": 9999}}}}},
    "arrays": {
        "type": "object", "additionalProperties": False, "required": ["tags", "points"],
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 4},
                                "minItems": 1, "maxItems": 3},
                       "points": {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 9},
                                  "maxItems": 4}}},
    "enums": {
        "type": "object", "additionalProperties": False, "required": ["colour", "size", "ok"],
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "size": {"const": "XL"},
                       "ok": {"type": "boolean"}}},
    "bounded numbers": {
        "type": "object", "additionalProperties": False, "required": ["age", "score"],
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "score": {"type": "integer", "minimum": -50, "maximum": 50}}},
    "optional fields": {
        "type": "object", "additionalProperties": False, "required": ["id"],
        "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                       "note": {"type": "string", "maxLength": 5}, "flag": {"type": "boolean"}}},
}


def _guided(schema: dict) -> GuidedDecoding:
    return GuidedDecoding(GuideKind.JSON_SCHEMA, schema=json.dumps(schema))


def _free(kit, request_id: str, seed: int | None = None):
    sampling = SamplingParams(temperature=0.8 if seed is not None else 0.0, seed=seed, ignore_eos=True)
    return kit.request(request_id, f"Tell me a story {request_id}", 24, sampling=sampling)


def test_json_schema_answers_validate_in_a_batch_beside_unchanged_free_requests(tiny_kit):
    exact = {"batch_invariant": True}  # the mode in which a batch must not change a neighbour's tokens
    solo = [run_alone(tiny_kit, _free(tiny_kit, "free-greedy"), **exact),
            run_alone(tiny_kit, _free(tiny_kit, "free-seed", 3), **exact)]
    guided = [tiny_kit.request(f"{name}/{temperature}", PROMPT, MAX_TOKENS,
                               SamplingParams(temperature=temperature, seed=11, guided=_guided(schema)))
              for name, schema in SCHEMAS.items() for temperature in (0.0, 1.0)]
    free = [_free(tiny_kit, "free-greedy"), _free(tiny_kit, "free-seed", 3)]
    drive(tiny_kit.engine(**exact), {0: guided[::2] + free[:1], 1: guided[1::2] + free[1:]})
    for request in guided:
        name = request.seq.request_id.split("/")[0]
        assert request.finish_reason is FinishReason.STOP, (name, request.text)
        jsonschema.validate(json.loads(request.text), SCHEMAS[name])
    for alone, batched in zip(solo, free):
        assert batched.token_ids == alone.token_ids


def test_eos_is_allowed_only_where_the_json_object_grammar_accepts(tiny_kit):
    eos = tiny_kit.tokenizer.eos_token_id
    guide = tiny_kit.grammars.guide(GuidedDecoding(GuideKind.JSON_OBJECT))
    vocab_size = tiny_kit.grammars.vocab_size
    bitmask = torch.zeros(1, (vocab_size + 31) // 32, dtype=torch.int32)
    allowed = []
    for token_id in [*tiny_kit.tokenizer.encode("{}"), eos]:
        guide.fill(bitmask, 0)
        allowed.append(unpack_bitmask(bitmask, vocab_size)[0])
        done = guide.advance(token_id)
    assert not allowed[0][eos] and not allowed[1][eos]  # before "{" and inside the object
    assert np.flatnonzero(allowed[2]).tolist() == [eos]  # after "}": only EOS
    assert done


def test_running_out_of_tokens_inside_the_json_ends_with_length(tiny_kit):
    request = run_alone(tiny_kit, tiny_kit.request("short", PROMPT, 4, SamplingParams(
        guided=_guided(SCHEMAS["nested objects"]))))
    assert request.finish_reason is FinishReason.LENGTH and len(request.token_ids) == 4
    assert request.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(request.text)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_choice_and_regex(tiny_kit, temperature):
    choices = ("yes", "no", 'it "depends"\non it')
    regex = r"[A-Z]{2}-\d{3}(-[a-z]{1,4})?"
    picked = tiny_kit.request("choice", PROMPT, 32, SamplingParams(
        temperature=temperature, seed=2, guided=GuidedDecoding(GuideKind.CHOICE, choices=choices)))
    matched = tiny_kit.request("regex", PROMPT, 32, SamplingParams(
        temperature=temperature, seed=2, guided=GuidedDecoding(GuideKind.REGEX, regex=regex)))
    drive(tiny_kit.engine(), {0: [picked, matched]})
    assert picked.text in choices and picked.finish_reason is FinishReason.STOP
    assert re.fullmatch(regex, matched.text) and matched.finish_reason is FinishReason.STOP


def test_bad_schema_or_regex_is_an_invalid_request_naming_the_problem(tiny_kit):
    with pytest.raises(InvalidRequest, match="nope"):
        tiny_kit.grammars.compile(_guided({"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}))
    with pytest.raises(InvalidRequest, match="parenthesis"):
        tiny_kit.grammars.compile(GuidedDecoding(GuideKind.REGEX, regex="(ab"))
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        GuidedDecoding(GuideKind.JSON_SCHEMA, schema="{nope")


def test_grammars_are_cached_by_schema_hash(tiny_kit):
    first = tiny_kit.grammars.compile(_guided(SCHEMAS["enums"]))
    same = tiny_kit.grammars.compile(_guided(json.loads(json.dumps(SCHEMAS["enums"]))))
    assert same is first
    assert tiny_kit.grammars.compile(_guided(SCHEMAS["arrays"])) is not first


def test_the_grammar_cache_keeps_the_most_recently_used(tiny_kit):
    grammars = GrammarCompiler(tiny_kit.tokenizer, tiny_kit.grammars.vocab_size, {tiny_kit.tokenizer.eos_token_id},
                               cache_size=2)
    regex = [GuidedDecoding(GuideKind.REGEX, regex=f"a{{{n}}}") for n in (1, 2, 3)]
    first, second = grammars.compile(regex[0]), grammars.compile(regex[1])
    assert grammars.compile(regex[0]) is first  # a hit makes it the most recently used
    grammars.compile(regex[2])  # evicts regex[1], the least recently used
    assert grammars.num_cached == 2 and grammars.compile(regex[0]) is first
    assert grammars.compile(regex[1]) is not second and grammars.num_cached == 2


def test_bitmask_unpacks_bit_j_of_word_w_to_token_32w_plus_j():
    bitmask = torch.tensor([[1 - 2**31, 0, 4]], dtype=torch.int32)  # 0x80000001: tokens 0 and 31; then 66
    allowed = unpack_bitmask(bitmask, 70)
    assert np.flatnonzero(allowed[0]).tolist() == [0, 31, 66]


def test_greedy_logprobs_equal_log_softmax_of_a_reference_forward(tiny_ckpt, tiny_kit):
    request = run_alone(tiny_kit, tiny_kit.request("lp", PROMPT, 8, SamplingParams(
        logprobs=True, top_logprobs=5, ignore_eos=True)))
    model = build_language_model(tiny_ckpt, dtype=torch.float32, device="cpu", attn_implementation="sdpa")
    ids = torch.tensor([request.seq.prompt_ids + request.token_ids[:-1]])  # [1, T]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, request.seq.num_prompt_tokens - 1:]  # [8, V]
    reference = torch.log_softmax(logits.float(), -1)  # [8, V]
    assert len(request.logprobs) == len(request.token_ids) == 8
    for position, entry in enumerate(request.logprobs):
        row = reference[position]
        assert entry.chosen.token_id == request.token_ids[position] == int(row.argmax())
        assert entry.chosen.logprob == pytest.approx(float(row.max()), abs=1e-4)
        assert [t.token_id for t in entry.top] == row.topk(5).indices.tolist()
        assert [t.logprob for t in entry.top] == pytest.approx(row.topk(5).values.tolist(), abs=1e-4)
        assert entry.chosen.token_bytes.decode("utf-8", "replace") == entry.chosen.token


def test_guided_logprobs_are_over_the_allowed_tokens(tiny_kit):
    request = run_alone(tiny_kit, tiny_kit.request("lp-guided", PROMPT, 32, SamplingParams(
        logprobs=True, top_logprobs=20, guided=GuidedDecoding(GuideKind.CHOICE, choices=("alpha", "beta")))))
    first = request.logprobs[0]
    assert first.top and all(t.token and ("alpha".startswith(t.token) or "beta".startswith(t.token))
                             for t in first.top)
    assert sum(torch.tensor([t.logprob for t in first.top]).exp().tolist()) == pytest.approx(1.0, abs=1e-4)


def test_a_preempted_guided_sequence_keeps_its_grammar_state(tiny_kit):
    """Preemption recomputes the KV of the tokens already streamed without sampling them again,
    so each matcher sees every token once: the outputs are those of solo runs."""
    long_string = _guided({"type": "object", "required": ["text"],
                           "properties": {"text": {"type": "string", "minLength": 1000}}})
    budget = 320

    def requests(tag: str):
        return [tiny_kit.request(f"{tag}{i}", f"request {i} about ships", 100,
                                 SamplingParams(temperature=1.0, seed=i, guided=long_string)) for i in range(4)]

    crowded = requests("kv")
    drive(tiny_kit.engine(max_kv_tokens=budget, max_model_len=budget, batch_invariant=True), {0: crowded})
    assert sum(r.seq.num_preemptions for r in crowded) > 0
    for request, alone in zip(crowded, requests("alone")):
        run_alone(tiny_kit, alone, batch_invariant=True)
        assert request.finish_reason is FinishReason.LENGTH and request.token_ids == alone.token_ids
