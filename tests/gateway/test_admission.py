"""The gateway's own bounds refuse at once with ResourceExhausted and a Retry-After, and free
their slot when the request ends, however it ends."""

from __future__ import annotations

import pytest

from dvd.errors import ResourceExhausted
from gateway.admission import Admission


def test_requests_past_the_bound_are_refused_with_retry_after():
    admission = Admission(max_requests=2, max_bytes=0, retry_after_s=3)
    with admission.request(), admission.request():
        with pytest.raises(ResourceExhausted) as info:
            with admission.request():
                pass
        assert info.value.retry_after_s == 3 and "2 concurrent" in info.value.message
    with pytest.raises(RuntimeError), admission.request():
        raise RuntimeError("the request failed")
    assert admission.requests == 0 and admission.rejected == 1


def test_media_bytes_are_bounded_but_one_big_request_still_passes_alone():
    admission = Admission(max_requests=0, max_bytes=100)
    with admission.hold_bytes(250):  # alone: admitted (it passed the per-image caps)
        with pytest.raises(ResourceExhausted, match="MiB"):
            with admission.hold_bytes(1):
                pass
    with admission.hold_bytes(60):
        with admission.hold_bytes(40):
            assert admission.num_bytes == 100
        with pytest.raises(ResourceExhausted):
            with admission.hold_bytes(41):
                pass
    assert admission.num_bytes == 0
