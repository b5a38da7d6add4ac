"""A pool's live replica set: membership (from discovery), health, ejection, and the choice
of replica for each call.

- One HTTP/2 channel per replica (per pod), so long-lived connections never pin a pool's load
  to one pod: every call picks its replica anew.
- Least outstanding calls wins (round-robin among ties), or a key's rendezvous-hash owner when
  the caller wants affinity (identical images to the replica that caches them).
- A replica whose call fails at the transport level, or whose health check stops saying
  SERVING (draining), is ejected; it is probed again after a backoff and readmitted only when
  a probe says SERVING.
- A call that finds no replica available (all ejected, or none discovered yet: pools starting
  together with the gateway, a pool scaled from zero) probes now and waits a bounded time for
  one to turn SERVING, instead of failing at once.
- Whoever holds state that points at a replica (the gateway's ref cache) hears of each ejection
  through `on_eject(target)`."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dvd.errors import Unavailable
from dvd.grpc_options import channel_options
from dvd.tls import TlsFiles, aio_channel

log = logging.getLogger(__name__)

EJECT_BASE_S = 1.0
EJECT_MAX_S = 30.0
WAIT_FOR_REPLICA_S = 15.0
PROBE_INTERVAL_S = 0.25


@dataclass(eq=False)
class Replica:
    target: str
    channel: grpc.aio.Channel
    stub: object
    outstanding: int = 0
    failures: int = 0  # consecutive
    ejected: bool = False
    probe_after: float = 0.0  # an ejected replica's next health probe
    health: object = field(default=None, repr=False)


class ReplicaSet:
    def __init__(self, service_name: str, stub_class: type, clock=time.monotonic, tls: TlsFiles | None = None,
                 on_eject: Callable[[str], None] | None = None) -> None:
        self.service_name = service_name
        self.tls = tls  # client TLS (mTLS with a certificate) to every replica of the pool
        self.stub_class = stub_class
        self._clock = clock
        self._on_eject = on_eject
        self.replicas: dict[str, Replica] = {}
        self._tiebreak = itertools.count()
        self._closing: set[asyncio.Task] = set()  # keep references: un-referenced tasks may be collected
        self._probing: asyncio.Task | None = None  # one health sweep shared by every waiting call

    def set_targets(self, targets) -> None:
        """Follow discovery: add new targets, drop vanished ones (their in-flight calls finish)."""
        targets = set(targets)
        for target in targets - self.replicas.keys():
            channel = aio_channel(target, self.tls, channel_options(client=True))
            self.replicas[target] = Replica(target, channel, self.stub_class(channel),
                                            health=health_pb2_grpc.HealthStub(channel))
            log.info("%s: replica %s added", self.service_name, target)
        for target in self.replicas.keys() - targets:
            replica = self.replicas.pop(target)
            log.info("%s: replica %s removed", self.service_name, target)
            task = asyncio.get_running_loop().create_task(_close_when_idle(replica))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def acquire(self, affinity: str = "", exclude: frozenset[str] = frozenset(),
                      wait_s: float = WAIT_FOR_REPLICA_S) -> Replica:
        """`pick`, after waiting up to `wait_s` (probing health) while no replica is available."""
        deadline = self._clock() + wait_s
        while not self._live(exclude) and self._clock() < deadline:
            if self._probing is None or self._probing.done():
                self._probing = asyncio.get_running_loop().create_task(self.check_health(which="all"))
            await asyncio.wait({self._probing}, timeout=PROBE_INTERVAL_S)
            if not self._live(exclude):
                await asyncio.sleep(PROBE_INTERVAL_S)
        return self.pick(affinity, exclude)

    def _live(self, exclude: frozenset[str]) -> list[Replica]:
        return [r for r in self.replicas.values() if not r.ejected and r.target not in exclude]

    def pick(self, affinity: str = "", exclude: frozenset[str] = frozenset()) -> Replica:
        live = self._live(exclude)
        if not live:  # everything ejected: try the least recently failed rather than fail fast
            live = sorted((r for r in self.replicas.values() if r.target not in exclude), key=lambda r: r.probe_after)[:1]
        if not live:
            raise Unavailable(f"no {self.service_name} replica is available")
        if affinity:
            return max(live, key=lambda r: hashlib.blake2b(f"{affinity}|{r.target}".encode(), digest_size=8).digest())
        low = min(r.outstanding for r in live)
        candidates = [r for r in live if r.outstanding == low]
        return candidates[next(self._tiebreak) % len(candidates)]

    def succeeded(self, replica: Replica) -> None:
        replica.failures = 0
        replica.ejected = False

    def failed(self, replica: Replica, reason: str) -> None:
        replica.failures += 1
        backoff = min(EJECT_BASE_S * 2 ** (replica.failures - 1), EJECT_MAX_S)
        newly, replica.ejected = not replica.ejected, True
        replica.probe_after = self._clock() + backoff
        (log.warning if newly else log.debug)("%s: ejecting %s, next probe in %.0f s (%s)", self.service_name, replica.target, backoff, reason)
        if newly and self._on_eject is not None:
            self._on_eject(replica.target)

    async def check_health(self, timeout_s: float = 2.0, which: str = "sweep") -> None:
        """Probe replicas once: SERVING readmits, anything else ejects. `which`: "sweep" = the
        admitted ones and the ejected ones whose backoff has passed; "due" = only the latter;
        "all" = every replica (a call is waiting for one)."""
        now = self._clock()
        due = {r.target for r in self.replicas.values() if r.ejected and r.probe_after <= now}
        replicas = [r for r in self.replicas.values()
                    if which == "all" or r.target in due or (which == "sweep" and not r.ejected)]
        await asyncio.gather(*(self._probe(r, timeout_s) for r in replicas))

    async def _probe(self, replica: Replica, timeout_s: float) -> None:
        try:
            # wait_for_ready: a replica still connecting (or in reconnect backoff) gets the
            # whole timeout to answer rather than failing fast
            reply = await replica.health.Check(health_pb2.HealthCheckRequest(service=self.service_name),
                                               timeout=timeout_s, wait_for_ready=True)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError as err:
            serving, reason = False, err.code().name
        else:
            reason = "not SERVING"
        if serving:
            if replica.ejected:
                log.info("%s: %s is healthy again", self.service_name, replica.target)
            self.succeeded(replica)
        else:
            self.failed(replica, f"health check: {reason}")

    def healthy_count(self) -> int:
        return sum(not r.ejected for r in self.replicas.values())

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.channel.close()
        self.replicas.clear()


async def _close_when_idle(replica: Replica, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while replica.outstanding and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await replica.channel.close()
