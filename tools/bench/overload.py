"""`dvd bench overload`: does the gateway's bound keep admitted requests fast past saturation?

Method: one stack (1 vision + 1 language, the gateway with `--max-concurrent-requests K`). Per
round, three points with fresh images each: (1) unloaded: one client, back to back; (2) the
sustainable load: K clients, back to back, whose throughput X is what the stack sustains within
the bound; (3) overload: Poisson arrivals at 2X, no client-side cap. Requests past the bound get
a fast 429 (counted, not retried); the figure is the p99 TTFT of the admitted requests at 2X over
the unloaded p99 TTFT (the goal: at most 2). Rounds alternate the points, so machine noise
shows as their spread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path

from stack.launcher import LocalStack, StackOptions
from tools.bench.serve import PointResult, ServeOptions, run_sweep
from tools.bench.workload import ImageSize, WorkloadSpec


@dataclass(frozen=True)
class OverloadOptions:
    checkpoint: Path
    log_dir: Path
    max_concurrent: int = 2  # the gateway's --max-concurrent-requests
    num_requests: int = 60  # per point
    output_tokens: int = 16
    image_size: ImageSize = ImageSize(448, 448)
    rounds: int = 2
    overload_factor: float = 2.0


def _point(p: PointResult) -> dict:
    s = p.summary
    return {"mode": p.mode, "value": round(p.value, 3), "ok": s.completed, "errors": s.errors,
            "throughput_rps": round(s.request_throughput, 3), "ttft_p50_ms": round(s.ttft_ms.get("p50", 0), 1),
            "ttft_p99_ms": round(s.ttft_ms.get("p99", 0), 1)}


async def _round(base: ServeOptions, opts: OverloadOptions, offset: int) -> dict:
    unloaded = (await run_sweep(replace(base, concurrency=(1,), stream_offset=offset)))[0]
    sustained = (await run_sweep(replace(base, concurrency=(opts.max_concurrent,), stream_offset=offset + 1)))[0]
    rate = opts.overload_factor * sustained.summary.request_throughput
    over = (await run_sweep(replace(base, rates=(rate,), stream_offset=offset + 2)))[0]
    ratio = over.summary.ttft_ms.get("p99", 0) / max(unloaded.summary.ttft_ms.get("p99", 0), 1e-9)
    return {"unloaded": _point(unloaded), "sustained": _point(sustained), "overload": _point(over),
            "admitted_p99_ttft_over_unloaded_p99": round(ratio, 2)}


def run_overload(opts: OverloadOptions) -> list[dict]:
    stack_opts = StackOptions(checkpoint=opts.checkpoint, device="cpu", dtype="float32", log_dir=opts.log_dir,
                              gateway_args=["--max-concurrent-requests", str(opts.max_concurrent)],
                              ready_timeout_s=600)
    workload = WorkloadSpec(image_sizes=(opts.image_size,), prompt_words=16, output_tokens=opts.output_tokens)
    with LocalStack(stack_opts) as stack:
        base = ServeOptions(workload=workload, base_url=stack.base_url, num_requests=opts.num_requests, warmup=0,
                            progress=False)
        asyncio.run(run_sweep(replace(base, num_requests=4, stream_offset=10_000)))  # warm-up, unmeasured
        return [asyncio.run(_round(base, opts, 3 * i)) for i in range(opts.rounds)]


def format_rounds(rounds: list[dict]) -> str:
    lines = ["| round | point | load | ok | errors | req/s | TTFT p50 ms | TTFT p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds):
        for name in ("unloaded", "sustained", "overload"):
            p = r[name]
            lines.append(f"| {i} | {name} | {p['mode']} {p['value']} | {p['ok']} | {p['errors'] or '-'} | "
                         f"{p['throughput_rps']} | {p['ttft_p50_ms']} | {p['ttft_p99_ms']} |")
    ratios = ", ".join(str(r["admitted_p99_ttft_over_unloaded_p99"]) for r in rounds)
    return "\n".join(lines) + f"\n\nadmitted p99 TTFT at overload / unloaded p99 TTFT, per round: {ratios}"
