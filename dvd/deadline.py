"""A request's deadline, made once at the edge that received the request and carried on every
hop after it: each gRPC call it makes gets the time that is left as its timeout (and a callee
reads it back from its own context), so retries and fetches share one budget instead of each
starting a fresh one."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dvd.errors import DeadlineExceeded

# The smallest timeout worth sending: below it a call cannot even reach its peer.
MIN_CALL_TIMEOUT_S = 0.01


@dataclass(frozen=True)
class Deadline:
    """An instant on the monotonic clock by which the request must be done."""

    expires_at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def earliest(cls, *timeouts_s: float | None) -> Deadline:
        """The deadline of the tightest of several budgets (None ones are ignored)."""
        given = [t for t in timeouts_s if t is not None]
        if not given:
            raise ValueError("need at least one timeout")
        return cls.after(min(given))

    def remaining_s(self) -> float:
        return self.expires_at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining_s() <= 0

    def timeout_s(self, cap_s: float | None = None, what: str = "request") -> float:
        """The timeout for the next call: what is left, at most `cap_s`; DeadlineExceeded when
        nothing useful is left."""
        left = self.remaining_s()
        if left < MIN_CALL_TIMEOUT_S:
            raise DeadlineExceeded(f"the {what} ran out of time (its deadline passed)")
        return min(left, cap_s) if cap_s is not None else left
