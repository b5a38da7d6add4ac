"""Integration fixtures: real stacks (separate processes on loopback) per checkpoint and mode."""

from __future__ import annotations

import pytest

from stack.launcher import LocalStack, StackOptions


@pytest.fixture(scope="session")
def stacks(tmp_path_factory):
    """Lazily started stacks keyed by (checkpoint, monolithic); stopped at session end."""
    started: dict[tuple, LocalStack] = {}

    def get(checkpoint, monolithic: bool = False, **kwargs) -> LocalStack:
        key = (str(checkpoint), monolithic, tuple(sorted(kwargs.items())))
        if key not in started:
            log_dir = tmp_path_factory.mktemp("logs")
            opts = StackOptions(checkpoint=checkpoint, monolithic=monolithic, device="cpu", dtype="float32",
                                log_dir=log_dir, ready_timeout_s=300, **kwargs)
            started[key] = LocalStack(opts).start()
        return started[key]

    yield get
    for stack in started.values():
        stack.stop()
