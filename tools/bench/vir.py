"""`dvd bench vir`: what the InternVL3.5-Flash Visual Resolution Router buys, side by side in one run.

Method: one stack (gateway, vision and language as separate processes on this machine) on a Flash
checkpoint (default small-flash). Every request carries one distinct 896x896 image (5 tiles: 2x2
grid + thumbnail, the paper's 896px setting) and a one-line question, and generates exactly
`max_tokens` tokens (ignore_eos). Per router mode, two bounded phases:

- latency: `latency_requests` requests one at a time; TTFT = first streamed token over the
  gateway's gRPC API, unloaded (so it is the request's own work, not queueing behind others);
- throughput: `requests` requests, `concurrency` in flight (closed loop); req/s = requests / wall
  time of the phase.

The modes are interleaved in rounds (off, auto, max, then max, auto, off, ...) so drift in the
machine's load hits every mode alike; every mode sees the same images, so no request hits the
embedding cache (its key includes the mode anyway); each round starts with warm-up requests on
other images, not counted. Reported per mode: visual tokens per image (usage.image_tokens), TTFT,
req/s, and the vision-stage and prefill times of the unloaded requests (from the final response's
stage timings); medians over requests / rounds, ratios against `off`.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

MODES = ("off", "auto", "max")
VIR_PB = {"off": common_pb2.VIR_MODE_OFF, "auto": common_pb2.VIR_MODE_AUTO, "max": common_pb2.VIR_MODE_MAX}
QUESTION = "Describe this image in detail."


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    image_tokens: int
    vision_s: float  # queue + encode, as the final response reports
    prefill_s: float


@dataclass(frozen=True)
class ModeResult:
    mode: str
    image_tokens: float  # per image
    ttft_p50_ms: float
    ttft_mean_ms: float
    req_per_s: float
    vision_ms: float
    prefill_ms: float


def _request(image: bytes, mode: str, max_tokens: int) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=image)),
            gateway_pb2.ChatContentPart(text=QUESTION)])],
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True), vir=VIR_PB[mode])


def _one(stub, image: bytes, mode: str, max_tokens: int) -> Sample:
    started = time.perf_counter()
    first, final = None, None
    for reply in stub.Chat(_request(image, mode, max_tokens), timeout=600):
        if first is None and reply.token_ids:
            first = time.perf_counter() - started
        final = reply
    t = final.timings
    return Sample(first, final.usage.image_tokens, (t.queue_ns + t.encode_ns) / 1e9, t.prefill_ns / 1e9)


@dataclass(frozen=True)
class Workload:
    latency: list[bytes]  # images sent one at a time (TTFT)
    throughput: list[bytes]  # images sent `concurrency` at a time (req/s)
    warmup: list[list[bytes]]  # per round: warm-up images, `concurrency` per mode, never counted


def _run(stub, images: list[bytes], mode: str, concurrency: int, max_tokens: int) -> tuple[list[Sample], float]:
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        samples = list(pool.map(lambda image: _one(stub, image, mode, max_tokens), images))
        return samples, time.perf_counter() - started


def bench_vir(grpc_target: str, work: Workload, concurrency: int, max_tokens: int, rounds: int) -> list[ModeResult]:
    latency: dict[str, list[Sample]] = {mode: [] for mode in MODES}
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    with grpc.insecure_channel(grpc_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for r in range(rounds):
            for i, mode in enumerate(MODES if r % 2 == 0 else MODES[::-1]):
                _run(stub, work.warmup[r][i * concurrency:(i + 1) * concurrency], mode, concurrency, max_tokens)
                latency[mode] += _run(stub, work.latency, mode, 1, max_tokens)[0]
                samples, wall = _run(stub, work.throughput, mode, concurrency, max_tokens)
                rates[mode].append(len(samples) / wall)
    return [_summarize(mode, latency[mode], rates[mode]) for mode in MODES]


def _summarize(mode: str, samples: list[Sample], rates: list[float]) -> ModeResult:
    ttfts = [s.ttft_s for s in samples]
    return ModeResult(
        mode=mode,
        image_tokens=statistics.mean(s.image_tokens for s in samples),
        ttft_p50_ms=statistics.median(ttfts) * 1000,
        ttft_mean_ms=statistics.mean(ttfts) * 1000,
        req_per_s=statistics.median(rates),
        vision_ms=statistics.median(s.vision_s for s in samples) * 1000,
        prefill_ms=statistics.median(s.prefill_s for s in samples) * 1000,
    )


def format_table(results: list[ModeResult]) -> str:
    base = next(r for r in results if r.mode == "off")
    lines = ["| vir | visual tokens / image | vs off | TTFT p50 ms | TTFT mean ms | vs off (p50) | req/s | vs off "
             "| vision stage ms | prefill ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.image_tokens:.0f} | {r.image_tokens / base.image_tokens:.2f}x | {r.ttft_p50_ms:.0f} "
            f"| {r.ttft_mean_ms:.0f} | {r.ttft_p50_ms / base.ttft_p50_ms:.2f}x | {r.req_per_s:.2f} "
            f"| {r.req_per_s / base.req_per_s:.2f}x | {r.vision_ms:.0f} | {r.prefill_ms:.0f} |")
    return "\n".join(lines)


def component_ms(checkpoint: str, image: bytes, repeats: int = 5) -> dict[str, float]:
    """Median ms of each vision step for one 5-tile image, in this process (no stack running), on
    one thread (a shared 2-core machine makes multi-threaded small ops erratic): what the router
    adds and what each projector costs next to the ViT."""
    import torch

    torch.set_num_threads(1)

    from vision_service.encoder import TileEncoder
    from vision_service.preprocess import ResolvedTiling, preprocess

    encoder = TileEncoder(checkpoint, torch.device("cpu"), torch.float32)
    tiles = preprocess(image, ResolvedTiling()).pixel_values
    grid = encoder.vit(tiles)
    none, every = torch.zeros(len(tiles), dtype=torch.bool), torch.ones(len(tiles), dtype=torch.bool)
    steps = {"ViT": lambda: encoder.vit(tiles), "router": lambda: encoder.compress_scores(grid),
             "mlp1, all tiles": lambda: encoder.project(grid, none), "mlp2, all tiles": lambda: encoder.project(grid, every)}
    out = {}
    for name, step in steps.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        out[name] = statistics.median(times) * 1000
    return out


def register(kinds) -> None:
    """Add `dvd bench vir` to the `dvd bench` sub-commands."""
    p = kinds.add_parser("vir", help="ViR router: visual tokens, TTFT, req/s for vir=off/auto/max side by side")
    p.add_argument("--preset", default="small-flash", help="a Flash preset or checkpoint dir")
    p.add_argument("--checkpoint-root", default="checkpoints")
    p.add_argument("--requests", type=int, default=24, help="throughput requests per mode per round")
    p.add_argument("--latency-requests", type=int, default=8, help="TTFT requests (one at a time) per mode per round")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (exact)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of all three modes (order alternates)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.set_defaults(func=main)


def main(a) -> int:
    import os
    from pathlib import Path
    from tempfile import mkdtemp

    from stack.launcher import LocalStack, StackOptions
    from tools.bench.workload import ImageSize, synthetic_image
    from tools.checkpoint import ensure_checkpoint

    checkpoint = ensure_checkpoint(a.preset, Path(a.checkpoint_root))
    size = ImageSize(896, 896)
    image = lambda seed: synthetic_image(size, seed).data  # noqa: E731
    work = Workload(latency=[image(seed) for seed in range(a.latency_requests)],
                    throughput=[image(1_000 + seed) for seed in range(a.requests)],
                    warmup=[[image(10_000 + r * 100 + i) for i in range(3 * a.concurrency)] for r in range(a.rounds)])
    opts = StackOptions(checkpoint=Path(checkpoint), device=a.device, dtype=a.dtype,
                        log_dir=Path(mkdtemp(prefix="dvd-bench-vir-")))
    with LocalStack(opts) as stack:
        results = bench_vir(stack.grpc_target, work, a.concurrency, a.max_tokens, a.rounds)
    components = component_ms(str(checkpoint), work.latency[0])
    print(f"## ViR router: {a.preset}, per mode and round {a.latency_requests} requests one at a time (TTFT) and "
          f"{a.requests} at concurrency {a.concurrency} (req/s), {a.rounds} rounds; one 896x896 image (5 tiles) "
          f"+ {a.max_tokens} output tokens per request; {os.cpu_count()} CPUs, device {a.device}\n")
    print(format_table(results))
    print("\nVision steps for one 5-tile image, one process, one thread (median ms): "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in components.items()))
    return 0
