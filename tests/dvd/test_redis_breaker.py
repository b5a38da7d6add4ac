"""A Redis that hangs (SIGSTOPped: the socket accepts, nothing answers) trips the store's circuit
breaker: after two timed-out calls every call is refused without touching the socket, until the
background probe finds Redis answering again (SIGCONT)."""

from __future__ import annotations

import asyncio
import os
import signal

from dvd.redis_store import RedisStore, StoreUnavailable


async def _refused(store: RedisStore) -> bool:
    try:
        await store.get_ref("k")
    except StoreUnavailable as exc:
        return "circuit open" in str(exc)
    return False


async def test_a_hung_redis_is_bypassed_then_readmitted(redis_server):
    store = RedisStore(redis_server.url, ttl_s=60, timeout_s=0.2, breaker_open_s=0.2)
    assert await store.get_ref("k") is None  # healthy: a plain miss
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(store.breaker.failures_to_open):
            assert not await _refused(store)  # these wait out the socket timeout
        assert store.breaker.is_open
        skipped = store.breaker.skipped
        assert all([await _refused(store) for _ in range(20)])
        assert store.breaker.skipped == skipped + 20
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    for _ in range(200):  # the probe runs in the background, every breaker_open_s
        if not store.breaker.is_open:
            break
        await _refused(store)
        await asyncio.sleep(0.05)
    assert not store.breaker.is_open
    assert await store.get_ref("k") is None
    await store.close()
