"""The gateway's own bounds: requests in flight and the media bytes they hold. Past either, a
request is refused at once (429 / RESOURCE_EXHAUSTED with Retry-After) rather than queued:
a queue in front of pools that are already full only turns overload into timeouts, and the
client (or its load balancer) can try another gateway or come back later."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dvd.errors import ResourceExhausted


class Admission:
    """Counters of admitted requests and of the media bytes they hold; 0 means unbounded."""

    def __init__(self, max_requests: int, max_bytes: int, retry_after_s: float = 1.0) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.retry_after_s = retry_after_s
        self.requests = 0
        self.num_bytes = 0
        self.rejected = 0

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold one request slot for the body of the `with`."""
        if self.max_requests and self.requests >= self.max_requests:
            self._refuse(f"the gateway is at its limit of {self.max_requests} concurrent requests")
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1

    @contextlib.contextmanager
    def hold_bytes(self, num_bytes: int) -> Iterator[None]:
        """Hold `num_bytes` of loaded media for the body of the `with`. One request larger than
        the whole budget is still admitted when nothing else is held (it passed the size caps)."""
        if self.max_bytes and self.num_bytes and self.num_bytes + num_bytes > self.max_bytes:
            self._refuse(f"the gateway holds {self.num_bytes / 2**20:.0f} MiB of media in flight "
                         f"(limit {self.max_bytes / 2**20:.0f} MiB)")
        self.num_bytes += num_bytes
        try:
            yield
        finally:
            self.num_bytes -= num_bytes

    def _refuse(self, why: str) -> None:
        self.rejected += 1
        raise ResourceExhausted(f"{why}; retry later", retry_after_s=self.retry_after_s)
