"""2 vision + 2 language replicas on loopback (tiny preset), under a steady load: a rolling
restart of each pool (SIGTERM -> NOT_SERVING -> drain -> start again on the same port) loses no
request, and a SIGSTOPped replica of each pool (hung, not dead) is routed around."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from stack.launcher import LocalStack, StackOptions
from tests.conftest import png_bytes
from tests.integration.cases import data_url

pytestmark = pytest.mark.faults  # minutes of process restarts: `make test-faults`


@pytest.fixture(scope="module")
def stack(tiny_ckpt, tmp_path_factory):
    opts = StackOptions(checkpoint=tiny_ckpt, device="cpu", dtype="float32", vision_replicas=2, language_replicas=2,
                        log_dir=tmp_path_factory.mktemp("logs"), ready_timeout_s=300)
    with LocalStack(opts) as running:
        yield running


def _chat(stack: LocalStack, seed: int, kinds: int = 7) -> tuple[int, str]:
    """One request; `kinds` distinct images in all, so most are cache hits whose refs point at
    a replica that may be restarting (the lost-embedding path)."""
    body = {"model": "internvl", "max_tokens": 16, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(png_bytes(448, 448, seed=seed % kinds))}},
                {"type": "text", "text": f"Describe it ({seed})."}]}]}
    reply = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=120)
    return reply.status_code, reply.text[:300]


class _Load:
    """Clients sending requests back to back until stopped; every reply is kept."""

    def __init__(self, stack: LocalStack, clients: int = 3) -> None:
        self.stack, self.clients = stack, clients
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._seeds = iter(range(10**6))
        self._lock = threading.Lock()

    def __enter__(self) -> _Load:
        for _ in range(self.clients):
            self._pool.submit(self._client)
        return self

    def _client(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                seed = next(self._seeds)
            result = _chat(self.stack, seed)
            with self._lock:
                self.results.append(result)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)


def test_a_rolling_restart_of_each_pool_under_load_loses_no_request(stack):
    with _Load(stack) as load:
        for name in ("vision-0", "vision-1", "language-0", "language-1"):
            stack.restart(name)
    failed = [r for r in load.results if r[0] != 200]
    assert load.results and not failed, failed
    assert all(p.restarts == 1 for p in stack.procs if p.name != "gateway")


def test_a_hung_replica_of_each_pool_is_routed_around(stack):
    hung = [stack.proc("vision-1").popen.pid, stack.proc("language-1").popen.pid]
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(4) as pool:  # about half of the images hash to the hung vision replica
            results = list(pool.map(lambda s: _chat(stack, s, kinds=10**6), range(1000, 1008)))
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed
