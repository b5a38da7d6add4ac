"""`dvd bench serve`: an asyncio load generator against a running gateway.

Method: the requests of every sweep point are generated before the point starts (images encoded
once; REST bodies carry them as base64 data: URLs, gRPC as bytes). Arrivals are either a fixed
number of concurrent clients (each sends its next request as soon as its previous reply ends)
or a Poisson process at a rate (seeded exponential gaps; optionally capped in concurrency). A
point stops sending after `num_requests` requests or `max_duration_s`, whichever comes first,
and waits for the replies in flight. Each point has its own images (no cache hits across
points), and `warmup` unmeasured requests run once before the first point. Every request is
greedy with `ignore_eos`, so each reply has exactly `output_tokens` tokens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import time
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from tqdm import tqdm

from tools.bench.client import BenchClient, GrpcClient, RestClient
from tools.bench.metrics import RequestRecord, Slo, Summary, summarize
from tools.bench.workload import BenchRequest, WorkloadSpec, build_requests

WARMUP_STREAM = 999_983  # the warm-up requests' images are drawn apart from every point's


@dataclass(frozen=True)
class ServeOptions:
    workload: WorkloadSpec
    protocol: str = "rest"  # "rest" | "grpc"
    base_url: str = "http://127.0.0.1:8000/v1"
    grpc_target: str = "127.0.0.1:50050"
    model: str = "internvl"
    concurrency: tuple[int, ...] = (4,)  # a sweep; ignored when `rates` is set
    rates: tuple[float, ...] = ()  # Poisson arrivals (requests/s), a sweep
    max_concurrency: int = 0  # cap for Poisson arrivals; 0: none
    reuse_sweep: tuple[float, ...] = ()  # image-reuse values to sweep; empty: the workload's
    num_requests: int = 32  # per point
    max_duration_s: float = 300.0  # per point: no request is sent after it
    warmup: int = 2
    request_timeout_s: float = 600.0
    slo: Slo = Slo()
    allow_remote: bool = False
    progress: bool = True
    stream_offset: int = 0  # shifts every point's image stream: repeated runs on one stack stay cache-cold

    def __post_init__(self) -> None:
        if self.protocol not in ("rest", "grpc"):
            raise ValueError(f"protocol must be rest or grpc, got {self.protocol!r}")
        if self.num_requests < 1 or self.max_duration_s <= 0 or self.warmup < 0:
            raise ValueError("need num_requests >= 1, max_duration_s > 0, warmup >= 0")
        if any(c < 1 for c in self.concurrency) or any(r <= 0 for r in self.rates):
            raise ValueError("concurrencies must be >= 1 and rates > 0")

    @property
    def target(self) -> str:
        return self.base_url if self.protocol == "rest" else self.grpc_target

    def points(self) -> list[tuple[float, str, float]]:
        """(reuse, load mode, load value) for every sweep point, in run order."""
        loads = [("rate", r) for r in self.rates] or [("concurrency", float(c)) for c in self.concurrency]
        return [(reuse, mode, value) for reuse in (self.reuse_sweep or (self.workload.reuse,))
                for mode, value in loads]


@dataclass(frozen=True)
class PointResult:
    reuse: float
    mode: str
    value: float
    summary: Summary
    records: list[RequestRecord]
    load_average: tuple[float, float, float]  # of the machine at the point's end: others' work shows here


def check_target(opts: ServeOptions) -> None:
    """Loopback unless the user explicitly allows another host: a load tool must not wander."""
    host = urlparse(opts.base_url).hostname if opts.protocol == "rest" else opts.grpc_target.rpartition(":")[0]
    host = (host or "").strip("[]")
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)} if host else set()
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        if not opts.allow_remote:
            raise ValueError(f"target {opts.target} is not a loopback address; pass --allow-remote to load it")


def make_client(opts: ServeOptions, max_in_flight: int) -> BenchClient:
    if opts.protocol == "rest":
        return RestClient(opts.base_url, opts.model, opts.request_timeout_s, max_in_flight)
    return GrpcClient(opts.grpc_target, opts.model, opts.request_timeout_s)


async def _run_concurrency(client: BenchClient, requests: list[BenchRequest], concurrency: int,
                           deadline: float, t0: float, bar: tqdm) -> list[RequestRecord]:
    pending = iter(requests)
    records: list[RequestRecord] = []

    async def worker() -> None:
        for request in pending:
            if time.perf_counter() >= deadline:
                return
            records.append(await client.send(request, t0))
            bar.update(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def _run_poisson(client: BenchClient, requests: list[BenchRequest], rate: float, max_concurrency: int,
                       deadline: float, t0: float, seed: int, bar: tqdm) -> list[RequestRecord]:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(max_concurrency or len(requests))
    records: list[RequestRecord] = []

    async def one(request: BenchRequest) -> None:
        async with gate:
            records.append(await client.send(request, t0))
            bar.update(1)

    tasks, next_at = [], time.perf_counter()
    for request in requests:
        next_at += rng.expovariate(rate)
        await asyncio.sleep(max(next_at - time.perf_counter(), 0.0))
        if time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(one(request)))
    await asyncio.gather(*tasks)
    return records


async def run_point(opts: ServeOptions, client: BenchClient, requests: list[BenchRequest], mode: str,
                    value: float, label: str) -> list[RequestRecord]:
    with tqdm(total=len(requests), desc=label, unit="req", disable=not opts.progress, leave=True) as bar:
        t0 = time.perf_counter()
        deadline = t0 + opts.max_duration_s
        if mode == "rate":
            return await _run_poisson(client, requests, value, opts.max_concurrency, deadline, t0,
                                      opts.workload.seed, bar)
        return await _run_concurrency(client, requests, int(value), deadline, t0, bar)


async def _warm_up(opts: ServeOptions, client: BenchClient) -> None:
    if not opts.warmup:
        return
    warm = build_requests(opts.workload, opts.warmup, stream_seed=WARMUP_STREAM)
    failed = [r for r in await run_point(opts, client, warm, "concurrency", 1, "warm-up") if not r.ok]
    if len(failed) == opts.warmup:
        raise RuntimeError(f"every warm-up request failed against {opts.target}: "
                           f"{failed[0].error_kind}: {failed[0].error}")


async def run_warmup(opts: ServeOptions) -> None:
    """Only the unmeasured warm-up requests (`dvd bench compare` runs them before its CPU meter)."""
    check_target(opts)
    client = make_client(opts, max_in_flight=1)
    try:
        await _warm_up(opts, client)
    finally:
        await client.close()


async def run_sweep(opts: ServeOptions) -> list[PointResult]:
    """Warm up, then run every sweep point against the target, one after the other."""
    check_target(opts)
    points = opts.points()
    biggest = max([int(v) for _, m, v in points if m == "concurrency"] + [opts.max_concurrency or 64])
    client = make_client(opts, max_in_flight=max(biggest, 1))
    results = []
    try:
        await _warm_up(opts, client)
        for index, (reuse, mode, value) in enumerate(points):
            workload = replace(opts.workload, reuse=reuse)
            requests = build_requests(workload, opts.num_requests, stream_seed=opts.stream_offset + index)
            label = f"reuse {reuse:.0%}, {mode} {value:g}"
            records = await run_point(opts, client, requests, mode, value, label)
            results.append(PointResult(reuse, mode, value, summarize(records, opts.slo), records, os.getloadavg()))
    finally:
        await client.close()
    return results
