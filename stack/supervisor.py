"""Keeps a `LocalStack` up: a process that exits on its own (crash, OOM kill, SIGKILL) is started
again on its ports after an exponential, jittered, capped backoff, and the gateway readmits it
when its health says SERVING. One that keeps crashing (`max_restarts` within `window_s`) is
given up on with a clear log line; its pool carries on with the replicas it has left, and a pool
with none answers 503. Processes the stack stops or restarts itself are not its business."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from stack.launcher import LocalStack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    base_s: float = 0.5  # the first restart's backoff; doubles with every crash in the window
    max_s: float = 30.0
    max_restarts: int = 5  # within window_s; one more crash and the process is given up on
    window_s: float = 300.0
    jitter: float = 0.5  # the backoff is scaled by a uniform factor in [1 - jitter, 1]

    def backoff_s(self, crashes: int, rng: random.Random) -> float:
        """Before the restart after the `crashes`-th crash in the window (1-based)."""
        return min(self.max_s, self.base_s * 2 ** (crashes - 1)) * rng.uniform(1 - self.jitter, 1)


@dataclass
class _Watch:
    crashes: deque = field(default_factory=deque)  # when it exited, within the window
    restart_at: float | None = None  # a restart is due then
    given_up: bool = False


class Supervisor:
    """`poll()` once, or `start()` a thread that polls until `stop()`."""

    def __init__(self, stack: LocalStack, policy: RestartPolicy = RestartPolicy(), poll_s: float = 0.2,
                 clock=time.monotonic, seed: int | None = None) -> None:
        self.stack = stack
        self.policy = policy
        self.poll_s = poll_s
        self._clock = clock
        self._rng = random.Random(seed)
        self._watch: dict[str, _Watch] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # poll() vs pause(): a process being restarted on purpose
        self._paused: set[str] = set()

    @property
    def given_up(self) -> list[str]:
        return [name for name, w in self._watch.items() if w.given_up]

    def poll(self) -> None:
        """Notice processes that exited and restart the ones whose backoff has passed."""
        with self._lock:
            now = self._clock()
            for proc in self.stack.procs:
                watch = self._watch.setdefault(proc.name, _Watch())
                if proc.name in self._paused or watch.given_up or proc.popen.poll() is None:
                    continue
                if watch.restart_at is None:
                    self._crashed(proc.name, proc.popen.returncode, watch, now)
                elif now >= watch.restart_at:
                    watch.restart_at = None
                    log.info("restarting %s (restart %d)", proc.name, proc.restarts + 1)
                    self.stack.respawn(proc.name)

    def _crashed(self, name: str, code: int, watch: _Watch, now: float) -> None:
        watch.crashes.append(now)
        while watch.crashes and watch.crashes[0] < now - self.policy.window_s:
            watch.crashes.popleft()
        if len(watch.crashes) > self.policy.max_restarts:
            watch.given_up = True
            log.error("%s exited (code %s) %d times within %.0f s: giving up on it; its pool carries on with "
                      "the replicas it has left (none left: that pool answers 503)", name, code,
                      len(watch.crashes), self.policy.window_s)
            return
        delay = self.policy.backoff_s(len(watch.crashes), self._rng)
        watch.restart_at = now + delay
        log.warning("%s exited (code %s); restarting it in %.1f s", name, code, delay)

    @contextlib.contextmanager
    def pause(self, name: str) -> Iterator[None]:
        """Leave `name` alone while the caller stops or restarts it on purpose."""
        with self._lock:
            self._paused.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._paused.discard(name)

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the supervisor must outlive one failed restart
                log.exception("supervisor poll failed")
