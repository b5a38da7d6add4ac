"""Streaming text never carries half a UTF-8 character, and the stream adds up to the
one-shot decode."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.stops import StopStrings

TEXTS = ["plain ascii words", "naïve café – déjà vu", "数据中心的视觉编码器", "emoji 🚀🧪 and 👩‍🔬 mixed", "a\nb\tc  d"]


@pytest.fixture(scope="module")
def tokenizer(tiny_ckpt):
    return AutoTokenizer.from_pretrained(tiny_ckpt)


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_one_shot_decode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_multibyte_characters_are_split_across_tokens(tokenizer):
    """The test above only means something if some characters span several tokens."""
    ids = tokenizer.encode("数据中心🚀", add_special_tokens=False)
    assert len(ids) > len("数据中心🚀")


def test_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode("hi", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    detok = IncrementalDetokenizer(tokenizer)
    assert "".join(detok.add(i) for i in ids) + detok.flush() == "hi"


@pytest.mark.parametrize(
    ("chunks", "stops", "expected", "stopped"),
    [
        (["hello wor", "ld. Bye"], ("world",), "hello ", True),
        (["ab", "c", "d"], ("cx",), "abcd", False),
        (["x STO", "P y"], ("STOP",), "x ", True),
        (["no stops here"], (), "no stops here", False),
        (["aaa", "b"], ("ab", "aab"), "a", True),
    ],
)
def test_stop_strings(chunks, stops, expected, stopped):
    s = StopStrings(stops)
    out, hit = "", False
    for c in chunks:
        text, hit = s.feed(c)
        out += text
        if hit:
            break
    if not hit:
        out += s.flush()
    assert (out, hit) == (expected, stopped)
