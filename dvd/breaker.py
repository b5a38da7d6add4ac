"""A circuit breaker for a dependency that is optional (the shared Redis): after
`failures_to_open` failures in a row it opens, and callers skip the dependency at once instead
of each waiting out its timeout. While open, a background probe (never a request) tries it
every `open_s`; the first probe that succeeds closes it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(self, name: str, probe: Callable[[], Awaitable[bool]], failures_to_open: int = 2,
                 open_s: float = 5.0, clock=time.monotonic) -> None:
        self.name = name
        self._probe = probe
        self.failures_to_open = failures_to_open
        self.open_s = open_s
        self._clock = clock
        self.failures = 0  # in a row
        self.is_open = False
        self._probe_after = 0.0
        self._probing: asyncio.Task | None = None
        self.skipped = 0  # calls refused while open

    def allow(self) -> bool:
        """Whether a call may go to the dependency now; while open, starts the probe when due."""
        if not self.is_open:
            return True
        if self._clock() >= self._probe_after and (self._probing is None or self._probing.done()):
            self._probing = asyncio.get_running_loop().create_task(self._try_probe())
        self.skipped += 1
        return False

    def succeeded(self) -> None:
        if self.is_open:
            log.info("%s answers again: circuit closed", self.name)
        self.failures, self.is_open = 0, False

    def failed(self) -> None:
        self.failures += 1
        if not self.is_open and self.failures >= self.failures_to_open:
            log.warning("%s failed %d times in a row: circuit open, skipping it (probe every %.0f s)",
                        self.name, self.failures, self.open_s)
            self.is_open = True
            self._probe_after = self._clock() + self.open_s

    async def _try_probe(self) -> None:
        try:
            ok = await self._probe()
        except Exception:  # noqa: BLE001 - a probe failing is what it is for
            ok = False
        if ok:
            self.succeeded()
        else:
            self._probe_after = self._clock() + self.open_s

    async def close(self) -> None:
        if self._probing is not None and not self._probing.done():
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
