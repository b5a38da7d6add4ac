"""`dvd bench soak`: a long run with faults. A whole stack (N vision + M language replicas, the
gateway, a Redis, and the supervisor `dvd serve` runs) takes `num_requests` streaming requests
with image reuse from `concurrency` clients, while faults are injected at evenly spaced points of
the first part of the run (up to `faults_until`): a replica SIGKILLed (the supervisor restarts
it) or Redis restarted empty. The rest of the run is the memory window.

It reports whether anything was lost (every request ends in success or in an error that a fault
accounts for: the request was in flight while a fault was being recovered from), hung (a request
that hit the client timeout), and the resident memory of every process sampled through the run,
with its least-squares slope over the memory window (MiB per 1,000 requests): the requests after
the last fault was recovered from plus a settling margin, on every process's last incarnation."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stack.launcher import LocalStack, StackOptions
from stack.local_redis import RedisServer
from stack.supervisor import RestartPolicy, Supervisor
from tools.bench.client import RestClient
from tools.bench.metrics import RequestRecord
from tools.bench.workload import ImageSize, WorkloadSpec, build_requests

log = logging.getLogger(__name__)

RECOVERY_SLACK_S = 5.0  # after a fault's process is SERVING again, requests it disturbed may still end


@dataclass(frozen=True)
class SoakOptions:
    checkpoint: Path
    log_dir: Path
    num_requests: int = 2000
    concurrency: int = 8
    reuse: float = 0.5
    vision_replicas: int = 2
    language_replicas: int = 2
    output_tokens: int = 8
    image_size: ImageSize = ImageSize(448, 448)
    faults: tuple[str, ...] = ("vision-1", "language-1", "redis", "vision-0", "language-0")
    faults_until: float = 0.5  # of the requests: faults are spread evenly over the run before it
    settle_fraction: float = 0.1  # of the requests, after the last recovery, before the memory window
    request_timeout_s: float = 120.0  # a request that takes longer counts as hung
    sample_s: float = 1.0
    # The vision replicas' embedding store, small enough to fill early in the run: past that point
    # their memory holds still unless something leaks (the default 2 GiB would grow all run long).
    store_max_mib: int = 16


@dataclass
class Fault:
    what: str
    at_request: int
    started_s: float = 0.0
    recovered_s: float = 0.0


@dataclass
class SoakResult:
    records: list[RequestRecord]
    faults: list[Fault]
    rss: dict[str, list[tuple[int, float, float]]]  # name -> (pid, requests done, MiB) samples
    window_start: int  # requests done when the memory window opens
    duration_s: float
    unexplained: list[RequestRecord] = field(default_factory=list)

    @property
    def hung(self) -> list[RequestRecord]:
        return [r for r in self.records if r.error_kind == "timeout"]

    @property
    def failed(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.ok]

    def slopes(self) -> dict[str, float | None]:
        """MiB per 1,000 requests over the memory window, per process (its last incarnation); None: too few samples."""
        out: dict[str, float | None] = {}
        for name, samples in self.rss.items():
            last_pid = samples[-1][0] if samples else None
            points = [(done, mib) for pid, done, mib in samples if pid == last_pid and done >= self.window_start]
            xs = np.array([p[0] for p in points], dtype=float)
            out[name] = float(np.polyfit(xs, [p[1] for p in points], 1)[0] * 1000) if len(set(xs)) >= 3 else None
        return out


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class _Sampler(threading.Thread):
    def __init__(self, stack: LocalStack, done, period_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.stack, self.done, self.period_s = stack, done, period_s
        self.samples: dict[str, list[tuple[int, float, float]]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period_s):
            for proc in list(self.stack.procs):
                mib = _rss_mib(proc.popen.pid)
                if mib is not None and proc.popen.poll() is None:
                    self.samples.setdefault(proc.name, []).append((proc.popen.pid, self.done(), mib))


def _inject(fault: Fault, stack: LocalStack, redis: RedisServer, t0: float) -> None:
    """Cause `fault` and wait until what it broke is back (SERVING, or Redis answering)."""
    fault.started_s = time.perf_counter() - t0
    log.warning("soak: fault %s at request %d", fault.what, fault.at_request)
    if fault.what == "redis":
        redis.stop()
        redis.start()
    else:
        proc = stack.proc(fault.what)
        restarts = proc.restarts
        proc.popen.kill()
        deadline = time.monotonic() + 120
        while proc.restarts == restarts and time.monotonic() < deadline:  # the supervisor's backoff, then respawn
            time.sleep(0.05)
        stack.wait_ready([proc])
    fault.recovered_s = time.perf_counter() - t0


async def _load(client: RestClient, requests, concurrency: int, on_done) -> list[RequestRecord]:
    t0 = time.perf_counter()
    pending = iter(requests)
    records: list[RequestRecord] = []

    async def worker() -> None:
        for request in pending:
            records.append(await client.send(request, t0))
            on_done()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def _window_start(records: list[RequestRecord], faults: list[Fault], opts: SoakOptions) -> int:
    """Requests done by the time the last fault was recovered from, plus the settling margin."""
    recovered = max((f.recovered_s for f in faults), default=0.0)
    done_by_then = sum(r.sent_s + (r.e2e_s or 0) <= recovered for r in records)
    return done_by_then + int(opts.num_requests * opts.settle_fraction)


def _account(result: SoakResult) -> None:
    """A failed request is explained when it was in flight while a fault was being recovered from."""
    windows = [(f.started_s, f.recovered_s + RECOVERY_SLACK_S) for f in result.faults]
    for r in result.failed:
        end = r.sent_s + (r.e2e_s or 0)
        if r.error_kind == "timeout" or not any(r.sent_s <= hi and end >= lo for lo, hi in windows):
            result.unexplained.append(r)


def run_soak(opts: SoakOptions) -> SoakResult:
    redis = RedisServer(opts.log_dir / "redis").start()
    stack_opts = StackOptions(checkpoint=opts.checkpoint, device="cpu", dtype="float32", redis_url=redis.url,
                              vision_replicas=opts.vision_replicas, language_replicas=opts.language_replicas,
                              log_dir=opts.log_dir, ready_timeout_s=600,
                              vision_args=["--store-max-mib", str(opts.store_max_mib)])
    stack = LocalStack(stack_opts).start()
    supervisor = Supervisor(stack, RestartPolicy(base_s=0.5, max_s=5.0)).start()
    spec = WorkloadSpec(image_sizes=(opts.image_size,), reuse=opts.reuse, prompt_words=8,
                        output_tokens=opts.output_tokens)
    requests = build_requests(spec, opts.num_requests)
    step = int(opts.num_requests * opts.faults_until) // (len(opts.faults) + 1)
    faults = [Fault(what, step * (i + 1)) for i, what in enumerate(opts.faults)]
    done = [0]
    sampler = _Sampler(stack, lambda: done[0], opts.sample_s)
    t0 = time.perf_counter()
    due = list(faults)
    chaos: list[threading.Thread] = []

    def on_done() -> None:
        done[0] += 1
        if due and done[0] >= due[0].at_request:  # in a thread: the load keeps running meanwhile
            thread = threading.Thread(target=_inject, args=(due.pop(0), stack, redis, t0), daemon=True)
            chaos.append(thread)
            thread.start()

    async def main() -> list[RequestRecord]:
        client = RestClient(stack.base_url, "internvl", opts.request_timeout_s, opts.concurrency)
        try:
            return await _load(client, requests, opts.concurrency, on_done)
        finally:
            await client.close()

    sampler.start()
    try:
        records = asyncio.run(main())
        for thread in chaos:
            thread.join()
    finally:
        sampler.halt.set()
        supervisor.stop()
        stack.stop()
        redis.stop()
    result = SoakResult(records, faults, sampler.samples, _window_start(records, faults, opts),
                        time.perf_counter() - t0)
    _account(result)
    return result


def summary(result: SoakResult) -> dict:
    """The figures RELIABILITY.md reports, as a JSON-able dict."""
    kinds: dict[str, int] = {}
    for r in result.failed:
        kinds[r.error_kind] = kinds.get(r.error_kind, 0) + 1
    return {
        "requests": len(result.records), "ok": sum(r.ok for r in result.records), "failed_by_kind": kinds,
        "unexplained_failures": len(result.unexplained), "hung": len(result.hung),
        "duration_s": round(result.duration_s, 1),
        "cached_images": sum(r.cached_images for r in result.records),
        "faults": [{"what": f.what, "at_request": f.at_request, "started_s": round(f.started_s, 1),
                    "recovered_s": round(f.recovered_s, 1)} for f in result.faults],
        "memory_window_from_request": result.window_start,
        "rss_mib_window": {name: _window_range(s, result.window_start) for name, s in result.rss.items() if s},
        "rss_slope_mib_per_1k_requests": {k: None if v is None else round(v, 2) for k, v in result.slopes().items()},
    }


def _window_range(samples: list[tuple[int, float, float]], start: int) -> list[float]:
    """[first, last] RSS MiB of the last incarnation inside the memory window."""
    last_pid = samples[-1][0]
    inside = [mib for pid, done, mib in samples if pid == last_pid and done >= start]
    return [round(inside[0], 1), round(inside[-1], 1)] if inside else []
