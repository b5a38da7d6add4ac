"""A pool's live replica set: membership (from discovery), health, ejection, and the choice
of replica for each call.

- One HTTP/2 channel per replica (per pod), so long-lived connections never pin a pool's load
  to one pod: every call picks its replica anew.
- Least outstanding calls wins (round-robin among ties), or a key's rendezvous-hash owner when
  the caller wants affinity (identical images to the replica that caches them).
- A replica whose call fails at the transport level, or whose health check stops saying
  SERVING (draining), is ejected and probed again after a backoff."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dvd.errors import Unavailable
from dvd.grpc_server import channel_options

log = logging.getLogger(__name__)

EJECT_BASE_S = 1.0
EJECT_MAX_S = 30.0


@dataclass(eq=False)
class Replica:
    target: str
    channel: grpc.aio.Channel
    stub: object
    outstanding: int = 0
    calls: int = 0
    failures: int = 0  # consecutive
    ejected_until: float = 0.0
    health: object = field(default=None, repr=False)

    def available(self, now: float) -> bool:
        return self.ejected_until <= now


class ReplicaSet:
    def __init__(self, service_name: str, stub_class: type, clock=time.monotonic) -> None:
        self.service_name = service_name
        self.stub_class = stub_class
        self._clock = clock
        self.replicas: dict[str, Replica] = {}
        self._tiebreak = itertools.count()

    def set_targets(self, targets) -> None:
        """Follow discovery: add new targets, drop vanished ones (their in-flight calls finish)."""
        targets = set(targets)
        for target in targets - self.replicas.keys():
            channel = grpc.aio.insecure_channel(target, options=channel_options())
            self.replicas[target] = Replica(target, channel, self.stub_class(channel),
                                            health=health_pb2_grpc.HealthStub(channel))
            log.info("%s: replica %s added", self.service_name, target)
        for target in self.replicas.keys() - targets:
            replica = self.replicas.pop(target)
            log.info("%s: replica %s removed", self.service_name, target)
            asyncio.get_event_loop().create_task(_close_when_idle(replica))

    def pick(self, affinity: str = "", exclude: frozenset[str] = frozenset()) -> Replica:
        now = self._clock()
        live = [r for r in self.replicas.values() if r.available(now) and r.target not in exclude]
        if not live:  # everything ejected: try the least recently failed rather than fail fast
            live = sorted((r for r in self.replicas.values() if r.target not in exclude), key=lambda r: r.ejected_until)[:1]
        if not live:
            raise Unavailable(f"no {self.service_name} replica is available")
        if affinity:
            return max(live, key=lambda r: hashlib.blake2b(f"{affinity}|{r.target}".encode(), digest_size=8).digest())
        low = min(r.outstanding for r in live)
        candidates = [r for r in live if r.outstanding == low]
        return candidates[next(self._tiebreak) % len(candidates)]

    def succeeded(self, replica: Replica) -> None:
        replica.failures = 0
        replica.ejected_until = 0.0

    def failed(self, replica: Replica, reason: str) -> None:
        replica.failures += 1
        backoff = min(EJECT_BASE_S * 2 ** (replica.failures - 1), EJECT_MAX_S)
        replica.ejected_until = self._clock() + backoff
        log.warning("%s: ejecting %s for %.0f s (%s)", self.service_name, replica.target, backoff, reason)

    async def check_health(self, timeout_s: float = 2.0) -> None:
        """Probe every replica once: SERVING readmits, anything else ejects."""
        await asyncio.gather(*(self._probe(r, timeout_s) for r in list(self.replicas.values())))

    async def _probe(self, replica: Replica, timeout_s: float) -> None:
        try:
            reply = await replica.health.Check(health_pb2.HealthCheckRequest(service=self.service_name),
                                               timeout=timeout_s)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError as err:
            serving, reason = False, err.code().name
        else:
            reason = "not SERVING"
        if serving:
            if replica.ejected_until:
                log.info("%s: %s is healthy again", self.service_name, replica.target)
            self.succeeded(replica)
        elif replica.available(self._clock()):
            self.failed(replica, f"health check: {reason}")

    def healthy_count(self) -> int:
        now = self._clock()
        return sum(r.available(now) for r in self.replicas.values())

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.channel.close()
        self.replicas.clear()


async def _close_when_idle(replica: Replica, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while replica.outstanding and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await replica.channel.close()
