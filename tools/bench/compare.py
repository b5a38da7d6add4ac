"""`dvd bench compare`: one workload against the colocated stack (`--monolithic`: vision and
language in one process) and the disaggregated stack (vision and language processes), one
after the other in one invocation, with the ratios.

Two hardware settings, both with every process pinned to its CPUs (`--cpus`):
- `paper` (the InternVL3.5 paper's): the language side gets the same CPUs in both deployments;
  disaggregated vision runs on CPUs of its own. Colocated = one process on the language CPUs.
- `equal-cores` (what a user pays): colocated gets the language + vision CPUs; disaggregated
  splits them between its vision and language processes.
The gateway and this load generator sit on the vision CPUs in every deployment: the language
CPUs carry nothing but language work, so "language hardware held equal" holds exactly, and the
front end's cost lands on the disaggregated side (it shares those CPUs with vision), never on
the colocated one (whose process does not use them in the `paper` setting).
The disaggregated deployment is the same in both settings, so it runs once.

Rounds: every deployment's stack is started up front (an idle stack costs no CPU) and the
measurements alternate between them, `rounds` times, each round with fresh images. On a machine
that other people also use, load that comes and goes then lands on every deployment alike; the
rounds' requests are pooled per deployment (throughput = all requests / the rounds' summed
durations) and the machine's load average is recorded with every point. Each round also reads
every process's CPU time from /proc: the report gives CPU-s per request by process (which stage
bounds the deployment) and the CPU time anything else on the machine used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from dvd.flags import pin_cpus
from stack.launcher import LocalStack, StackOptions
from tools.bench.metrics import Slo, duration_s, summarize
from tools.bench.serve import PointResult, ServeOptions, run_sweep, run_warmup

SETTINGS = ("paper", "equal-cores")


@dataclass(frozen=True)
class Deployment:
    key: str
    label: str
    monolithic: bool
    cpus: dict[str, tuple[int, ...]]  # StackOptions <role>_cpus fields


@dataclass(frozen=True)
class CompareOptions:
    checkpoint: Path
    serve: ServeOptions  # the workload and load; targets are filled in per stack
    settings: tuple[str, ...] = SETTINGS
    vision_cpus: tuple[int, ...] = (0,)
    language_cpus: tuple[int, ...] = (1,)
    device: str = "auto"
    dtype: str = "auto"
    log_dir: Path | None = None
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not self.settings or any(s not in SETTINGS for s in self.settings):
            raise ValueError(f"settings must be among {SETTINGS}, got {self.settings}")
        if set(self.vision_cpus) & set(self.language_cpus) or not self.vision_cpus or not self.language_cpus:
            raise ValueError("vision and language need their own, non-empty CPU sets")


def deployments(opts: CompareOptions) -> list[Deployment]:
    front = {"gateway_cpus": opts.vision_cpus}
    everything = tuple(sorted(set(opts.vision_cpus) | set(opts.language_cpus)))
    out = []
    if "paper" in opts.settings:
        out.append(Deployment("colocated_language_cpus", f"colocated on CPUs {_cpus(opts.language_cpus)}", True,
                              {"monolithic_cpus": opts.language_cpus, **front}))
    if "equal-cores" in opts.settings:
        out.append(Deployment("colocated_all_cpus", f"colocated on CPUs {_cpus(everything)}", True,
                              {"monolithic_cpus": everything, **front}))
    out.append(Deployment("disaggregated", f"vision on {_cpus(opts.vision_cpus)}, language on "
                          f"{_cpus(opts.language_cpus)}", False,
                          {"vision_cpus": opts.vision_cpus, "language_cpus": opts.language_cpus, **front}))
    return out


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))


def stack_options(opts: CompareOptions, dep: Deployment) -> StackOptions:
    return StackOptions(checkpoint=opts.checkpoint, monolithic=dep.monolithic, device=opts.device, dtype=opts.dtype,
                        log_dir=opts.log_dir / dep.key if opts.log_dir else None, model_name=opts.serve.model,
                        **dep.cpus)


@dataclass(frozen=True)
class CompareRun:
    points: dict[str, list[PointResult]]  # deployment key -> sweep points, rounds pooled
    other_cpu: dict[str, list[float]]  # deployment key -> per round: others' CPU-s per s (see CpuMeter)
    cpu_per_request: dict[str, dict[str, float]]  # deployment key -> process -> CPU-s per request, rounds pooled


def run_compare(opts: CompareOptions) -> CompareRun:
    """Every deployment, round after round, the same seeded workload each time; this process
    (the load generator) runs on the front-end CPUs."""
    pin_cpus(opts.vision_cpus)
    deps = deployments(opts)
    rounds: dict[str, list[list[PointResult]]] = {dep.key: [] for dep in deps}
    other_cpu: dict[str, list[float]] = {dep.key: [] for dep in deps}
    cpu_s: dict[str, dict[str, float]] = {dep.key: {} for dep in deps}
    with contextlib.ExitStack() as running:
        stacks = {}
        for dep in deps:
            print(f"== starting {dep.key}: {dep.label} ...", flush=True)
            stacks[dep.key] = running.enter_context(LocalStack(stack_options(opts, dep)))
        for index in range(opts.rounds):
            for dep in deps:
                print(f"== round {index + 1}/{opts.rounds}: {dep.key}", flush=True)
                serve = replace(opts.serve, base_url=stacks[dep.key].base_url, grpc_target=stacks[dep.key].grpc_target,
                                stream_offset=index * 10_000)
                if index == 0:
                    asyncio.run(run_warmup(serve))
                serve = replace(serve, warmup=0)
                meter = CpuMeter(stacks[dep.key])
                rounds[dep.key].append(asyncio.run(run_sweep(serve)))
                other, by_process = meter.read()
                other_cpu[dep.key].append(other)
                for name, seconds in by_process.items():
                    cpu_s[dep.key][name] = cpu_s[dep.key].get(name, 0.0) + seconds
    points = {key: [pool_rounds(list(point_rounds), opts.serve.slo) for point_rounds in zip(*per_round)]
              for key, per_round in rounds.items()}
    per_request = {key: {name: seconds / max(sum(len(p.records) for p in points[key]), 1)
                         for name, seconds in by_name.items()} for key, by_name in cpu_s.items()}
    return CompareRun(points, other_cpu, per_request)


LOAD_GENERATOR = "load generator"


class CpuMeter:
    """CPU time over one round: each process of the stack's and this process's (the load
    generator, its image synthesis included), and the machine's other work per second of wall
    time (0 on a quiet machine; 1 means a whole CPU's worth of someone else's work)."""

    def __init__(self, stack: LocalStack) -> None:
        self.pids = {p.name: p.popen.pid for p in stack.procs}
        self.start = (time.perf_counter(), _busy_cpu_s(), self._ours())

    def _ours(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        ours = {LOAD_GENERATOR: sum(os.times()[:2])}
        for name, pid in self.pids.items():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours[name] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return ours

    def read(self) -> tuple[float, dict[str, float]]:
        """(others' CPU-s per s, CPU-s by process) since the meter was made."""
        start_wall, start_busy, start_ours = self.start
        wall, busy = time.perf_counter() - start_wall, _busy_cpu_s() - start_busy
        ours = {name: seconds - start_ours[name] for name, seconds in self._ours().items()}
        other = max(busy - sum(ours.values()), 0.0) / wall if wall > 0 else 0.0
        return other, ours


def _busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat, all CPUs)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def pool_rounds(points: list[PointResult], slo: Slo) -> PointResult:
    """One sweep point measured in several rounds, as if the rounds had run back to back."""
    records, offset = [], 0.0
    for point in points:
        start = min((r.sent_s for r in point.records), default=0.0)
        records += [dataclasses.replace(r, sent_s=r.sent_s - start + offset) for r in point.records]
        offset += duration_s(point.records)
    first = points[0]
    load = tuple(max(p.load_average[i] for p in points) for i in range(3))
    return PointResult(first.reuse, first.mode, first.value, summarize(records, slo), records, load)


def ratios(results: dict[str, list[PointResult]]) -> list[dict]:
    """Disaggregated over colocated, per setting and sweep point."""
    rows = []
    base_of = {"paper": "colocated_language_cpus", "equal-cores": "colocated_all_cpus"}
    for setting, base_key in base_of.items():
        if base_key not in results:
            continue
        for base, disagg in zip(results[base_key], results["disaggregated"]):
            b, d = base.summary, disagg.summary
            rows.append({
                "setting": setting, "reuse": base.reuse, "mode": base.mode, "value": base.value,
                "colocated_req_s": b.request_throughput, "disaggregated_req_s": d.request_throughput,
                "request_throughput_ratio": _ratio(d.request_throughput, b.request_throughput),
                "output_throughput_ratio": _ratio(d.output_throughput, b.output_throughput),
                "goodput_ratio": _ratio(d.goodput, b.goodput),
                "ttft_p50_ratio": _ratio(d.ttft_ms["p50"], b.ttft_ms["p50"]),
                "e2e_p50_ratio": _ratio(d.e2e_ms["p50"], b.e2e_ms["p50"]),
                "failed": b.failed + d.failed,
            })
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def ratio_table(rows: list[dict]) -> str:
    lines = ["| setting | reuse | load | colocated req/s | disaggregated req/s | req/s ratio | out tok/s ratio | "
             "goodput ratio | TTFT p50 ratio | E2E p50 ratio | failed |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['reuse']:.0%} | {r['mode']} {r['value']:g} | {r['colocated_req_s']:.3f} | "
                     f"{r['disaggregated_req_s']:.3f} | **{r['request_throughput_ratio']:.2f}x** | "
                     f"{r['output_throughput_ratio']:.2f}x | {r['goodput_ratio']:.2f}x | {r['ttft_p50_ratio']:.2f}x | "
                     f"{r['e2e_p50_ratio']:.2f}x | {r['failed']} |")
    return "\n".join(lines)
