"""Hypothesis properties of the gateway's input handling: whatever a client sends as an image
(bytes, data: URLs, any text as a URL) or as a REST body, the answer is a result or an
InvalidRequest / validation error, never another exception."""

from __future__ import annotations

import asyncio
import base64

import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

from dvd.errors import DvdError, InvalidRequest
from gateway.images import ImageLoader, ImageSource, decode_data_url
from gateway.protocol import ChatCompletionRequest
from gateway.url_guard import UrlGuard, UrlPolicy

LOOP = asyncio.new_event_loop()


async def _nowhere(host: str, port: int) -> list[str]:
    raise OSError("no resolver in this test")


LOADER = ImageLoader(1024, UrlGuard(UrlPolicy(), _nowhere))


@given(st.binary(max_size=2048))
@settings(max_examples=200, deadline=None)
def test_data_urls_round_trip_or_are_refused(data):
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    try:
        assert LOOP.run_until_complete(LOADER.load(ImageSource(url=url))) == data
    except InvalidRequest as exc:
        assert not data or len(data) > 1024, exc.message
    assert decode_data_url(url, "image") == data


@given(st.one_of(st.text(max_size=200), st.text(max_size=50).map(lambda t: "data:" + t),
                 st.text(max_size=50).map(lambda t: "http://" + t)))
@settings(max_examples=300, deadline=None)
def test_any_url_text_loads_or_is_an_invalid_request(url):
    try:
        LOOP.run_until_complete(LOADER.load(ImageSource(url=url)))
    except InvalidRequest:
        pass


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)
FIELDS = st.sampled_from(["model", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
                          "vir", "vir_thresholds", "codec", "min_tiles", "max_tiles", "tools", "audio", "modalities",
                          "logit_bias", "presence_penalty", "stream_options"])


@given(st.dictionaries(FIELDS, JSON, max_size=6),
       st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": JSON}), max_size=2))
@settings(max_examples=400, deadline=None)
def test_any_body_validates_or_is_refused_and_converts_without_surprises(fields, messages):
    try:
        body = ChatCompletionRequest.model_validate({"messages": messages, **fields})
    except pydantic.ValidationError:
        return
    try:
        request = body.to_chat_request("req-1")
    except DvdError:
        return
    sampling = request.sampling  # what reaches protobuf: every integer fits its field
    assert sampling.max_tokens is None or 1 <= sampling.max_tokens < 2**32
    assert 0 <= sampling.top_k < 2**32 and (sampling.seed is None or 0 <= sampling.seed < 2**64)
