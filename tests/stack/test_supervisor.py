"""The supervisor restarts a process that exits on its own after a jittered, capped, growing
backoff, and gives up (with a clear log) on one that keeps crashing. Real child processes."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import time

from stack.launcher import _Proc
from stack.supervisor import RestartPolicy, Supervisor


class _Stack:
    """The part of LocalStack the supervisor uses: `procs` and `respawn`."""

    def __init__(self, argv: list[str]) -> None:
        self.procs = [_Proc("vision-0", subprocess.Popen(argv), "", "", argv=argv)]

    def respawn(self, name: str) -> None:
        proc = next(p for p in self.procs if p.name == name)
        proc.popen = subprocess.Popen(proc.argv)
        proc.restarts += 1


def test_backoff_grows_is_capped_and_jittered():
    policy = RestartPolicy(base_s=1, max_s=8, jitter=0.5)
    rng = random.Random(0)
    delays = [policy.backoff_s(n, rng) for n in range(1, 7)]
    assert all(0.5 * min(8, 2 ** (n - 1)) <= d <= min(8, 2 ** (n - 1)) for n, d in zip(range(1, 7), delays))
    assert len({round(d, 6) for d in delays[3:]}) > 1  # capped ones still differ: jitter


def _poll_until(supervisor: Supervisor, predicate, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        supervisor.poll()
        time.sleep(0.02)


def test_a_crashed_process_is_restarted_and_a_crash_loop_given_up(caplog):
    stack = _Stack([sys.executable, "-c", "raise SystemExit(3)"])
    supervisor = Supervisor(stack, RestartPolicy(base_s=0.01, max_s=0.05, max_restarts=2), seed=0)
    with caplog.at_level(logging.INFO, logger="stack.supervisor"):
        _poll_until(supervisor, lambda: supervisor.given_up == ["vision-0"])
    assert stack.procs[0].restarts == 2
    assert "giving up on it" in caplog.text and "code 3" in caplog.text


def test_a_process_that_recovers_stays_up_and_paused_ones_are_left_alone():
    stack = _Stack([sys.executable, "-c", "import time; time.sleep(30)"])
    supervisor = Supervisor(stack, RestartPolicy(base_s=0.01), seed=0)
    proc = stack.procs[0]
    with supervisor.pause("vision-0"):
        proc.popen.kill()
        proc.popen.wait()
        for _ in range(5):
            supervisor.poll()
        assert proc.restarts == 0
    _poll_until(supervisor, lambda: proc.restarts == 1 and proc.popen.poll() is None)
    proc.popen.kill()
    proc.popen.wait()
