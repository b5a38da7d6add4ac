"""`dvd bench vision`: where one vision replica's time goes and how its preprocessing scales, in one run.

Method (every number a median over `rounds`, alternatives interleaved round by round so drift in
the machine's load lands on all of them alike):
1. Stages: each image through decode, resize + tile (uint8 planes), the CPU normalisation as it
   was, the copy to the device + normalisation there, ViT, projector, codec; one stage at a time,
   ms per tile. Preprocessing runs in one thread, the model with the replica's torch threads.
2. CPU work per tile, one thread: today's `preprocess` before (decode, resize, tile, normalise on
   the CPU) against the uint8 path (decode, resize, tile; the device normalises) and the path of a
   replica that resizes on its device (`--resize-on-device`, the default on CUDA: decode and the
   copy into the buffer the device reads; the device resizes, tiles and normalises). The kernel
   launches of the device's part are CPU work too; without a GPU they cannot be timed here, so the
   report counts the torch ops that part dispatches per image.
3. Normalisation alone, one thread: the numpy table lookup before against the CPU normaliser now.
4. Preprocessing tiles/s by worker count, for worker threads and worker processes: the images
   through a started, warmed pool, tiles back in this process.
5. End to end: a vision replica (VisionCore behind its real gRPC server, on loopback) and
   `concurrency` clients calling Encode on distinct images (each photo re-encoded per request, so
   no request hits the embedding cache): tiles/s.
6. With --fidelity: what --fast-decode changes on large JPEGs (`tools.bench.vision_fidelity`) and
   what it saves in CPU time per tile.
The feed ratio puts 2. next to an accelerator's ViT time per tile: the preprocessing cores one
vision replica needs to keep that ViT busy (`tools.bench.plan.preprocess_cores`)."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tools.bench import photos as photo_sets
from tools.bench import vision_stages as stages
from tools.bench.plan import preprocess_cores
from tools.bench.vit import add_model_args
from vision_service.preprocess import ResolvedTiling, preprocess_pixels

H100_VIT_MS_PER_TILE = 1.8  # InternViT-300M, ~0.7 TFLOP per 448px tile at ~400 TFLOP/s (issue 13)


@dataclass(frozen=True)
class VisionBenchOptions:
    checkpoint: Path
    photos: tuple[photo_sets.Photo, ...]
    source: str  # what the photos are, for the report
    workers: tuple[int, ...] = (1, 2)
    kinds: tuple[str, ...] = ("thread", "process")
    rounds: int = 5
    scaling_copies: int = 4  # the photo set this many times per worker-scaling measurement
    requests: int = 16
    concurrency: int = 4
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0
    fidelity: bool = False
    accelerator_vit_ms: float = H100_VIT_MS_PER_TILE


@dataclass
class VisionBenchResult:
    device: str = ""
    tiles: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    cpu_work: stages.CpuWork | None = None
    device_ops_per_image: float = 0.0
    normalise_ms: dict[str, float] = field(default_factory=dict)
    scaling: stages.Scaling | None = None
    encode_tiles_per_s: float = 0.0
    encode_ms_per_request: float = 0.0
    fast_decode_ms: dict[str, float] = field(default_factory=dict)
    fidelity: list = field(default_factory=list)


def run_vision_bench(opts: VisionBenchOptions) -> VisionBenchResult:
    from dvd.config import DeviceConfig
    from dvd.devices import describe, resolve_device, resolve_dtype
    from vision_service.encoder import TileEncoder

    if opts.threads:
        torch.set_num_threads(opts.threads)
    tiling, images = ResolvedTiling(), [p.data for p in opts.photos]
    device_cfg = DeviceConfig(device=opts.device, dtype=opts.dtype)
    device = resolve_device(device_cfg)
    encoder = TileEncoder(str(opts.checkpoint), device, resolve_dtype(device_cfg, device))
    encoder.warmup()
    result = VisionBenchResult(device=f"{describe(device, encoder.dtype)}, {torch.get_num_threads()} torch threads")
    from dvd.types import Codec, Compression

    codec = Codec.FP32 if encoder.dtype == torch.float32 else Codec.BF16
    rounds = [stages.stage_seconds(encoder, images, tiling, codec, Compression.NONE) for _ in range(opts.rounds)]
    result.tiles = rounds[0][1]
    result.stage_ms = {s: statistics.median(r[0][s] for r in rounds) * 1000 / result.tiles for s in stages.STAGES}
    result.cpu_work = stages.cpu_work_per_tile(images, tiling, opts.rounds)
    result.device_ops_per_image = stages.device_ops_per_image(images, tiling)
    result.normalise_ms = stages.normalise_per_tile(images, tiling, opts.rounds)
    result.scaling = stages.worker_scaling(images * opts.scaling_copies, tiling, opts.workers, opts.kinds, opts.rounds)
    result.encode_tiles_per_s, result.encode_ms_per_request = asyncio.run(_encode_end_to_end(opts))
    if opts.fidelity:
        from tools.bench.vision_fidelity import measure_fidelity

        large = photo_sets.large_jpegs(list(opts.photos))
        result.fast_decode_ms = _fast_decode_ms([p.data for p in large], tiling, opts.rounds)
        result.fidelity = measure_fidelity(opts.checkpoint, large)
    return result


def _fast_decode_ms(images: list[bytes], tiling: ResolvedTiling, rounds: int) -> dict[str, float]:
    tiles = sum(preprocess_pixels(d, tiling).num_tiles for d in images)
    samples: dict[str, list[float]] = {"default": [], "fast": []}
    for index in range(rounds):
        for name in ("default", "fast") if index % 2 == 0 else ("fast", "default"):
            started = time.thread_time()
            for data in images:
                preprocess_pixels(data, tiling, fast_decode=name == "fast")
            samples[name].append((time.thread_time() - started) * 1000 / tiles)
    return {name: statistics.median(v) for name, v in samples.items()}


async def _encode_end_to_end(opts: VisionBenchOptions) -> tuple[float, float]:
    """tiles/s and mean ms per request through Encode on a real gRPC server in this process."""
    import grpc

    from dvd.config import DeviceConfig, VisionConfig
    from dvd.grpc_options import channel_options
    from dvd.grpc_server import GrpcService
    from protos.v1 import vision_pb2, vision_pb2_grpc
    from vision_service.core import VisionCore
    from vision_service.server import SERVICE_NAME
    from vision_service.servicer import VisionServicer

    cfg = VisionConfig(model=str(opts.checkpoint), device=DeviceConfig(opts.device, opts.dtype), metrics_port=0)
    core = VisionCore(cfg, opts.checkpoint, location="grpc://bench")
    service = GrpcService([SERVICE_NAME])
    port = service.bind("127.0.0.1", 0)
    vision_pb2_grpc.add_VisionEncoderServicer_to_server(VisionServicer(core), service.server)
    await service.start()
    await asyncio.to_thread(core.load)
    core.start()
    requests = [photo_sets.variant(opts.photos[i % len(opts.photos)], i) for i in range(opts.requests + 1)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(client=True)) as channel:
            stub = vision_pb2_grpc.VisionEncoderStub(channel)
            await stub.Encode(vision_pb2.EncodeRequest(image=requests.pop()))  # warm-up, not counted
            pending, tiles, latencies = list(requests), 0, []

            async def client() -> None:
                nonlocal tiles
                while pending:
                    started = time.perf_counter()
                    reply = await stub.Encode(vision_pb2.EncodeRequest(image=pending.pop()))
                    latencies.append(time.perf_counter() - started)
                    tiles += reply.num_tiles

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(opts.concurrency)))
            elapsed = time.perf_counter() - started
    finally:
        await core.stop()
        await service.server.stop(0)
    return tiles / elapsed, statistics.mean(latencies) * 1000


def _scaling_rows(scaling: stages.Scaling) -> list[str]:
    """The ratio to one worker is the median of each round's ratio: the rounds' neighbouring runs
    share the machine's load at the time, which drifts a lot between rounds on a shared machine."""
    rows, rates = [], scaling.tiles_per_s
    for (kind, workers), values in rates.items():
        base = rates[(kind, min(n for k, n in rates if k == kind))]
        ratio = statistics.median(v / b for v, b in zip(values, base))
        rate, cpu = statistics.median(values), statistics.median(scaling.cpu_per_wall[(kind, workers)])
        rows.append(f"| {kind} | {workers} | {rate:.1f} | {ratio:.2f}x | {cpu:.2f} | "
                    f"{', '.join(f'{r:.1f}' for r in values)} |")
    return rows


def format_report(result: VisionBenchResult, opts: VisionBenchOptions) -> str:
    work, norm = result.cpu_work, result.normalise_ms
    lines = [f"`dvd bench vision`: {opts.checkpoint.name} on {result.device}; {len(opts.photos)} images "
             f"({opts.source}), {result.tiles} tiles; median of {opts.rounds} rounds", "",
             "| stage | ms per tile |", "|---|---:|"]
    lines += [f"| {stage} | {ms:.3f} |" for stage, ms in result.stage_ms.items()]
    lines += ["", "CPU work per tile (the thread's CPU time), one thread, interleaved:", "",
              "| path | CPU ms per tile | vs before |", "|---|---:|---:|",
              f"| before: decode, resize, tile, normalise on the CPU | {work.before_ms:.3f} | 1.00x |",
              f"| uint8: decode, resize, tile (the device normalises) | {work.uint8_ms:.3f} | "
              f"{work.before_ms / work.uint8_ms:.2f}x lower |",
              f"| device resize: decode + hand-off (the device resizes, tiles, normalises) | {work.handoff_ms:.3f} | "
              f"{work.before_ms / work.handoff_ms:.2f}x lower |",
              "rounds (before, uint8, hand-off): "
              + ", ".join(f"({b:.2f}, {u:.2f}, {h:.2f})" for b, u, h in work.rounds),
              f"resizing and tiling on a CUDA device dispatches {result.device_ops_per_image:.0f} torch ops per image "
              "(about as many kernel launches: CPU time this table does not count)", "",
              f"normalisation on the CPU, one thread: before {norm['before']:.3f} CPU ms/tile, now {norm['now']:.3f} "
              f"CPU ms/tile: {norm['before'] / norm['now']:.2f}x faster", "",
              "Preprocessing tiles/s by workers:", "",
              "| pool | workers | tiles/s | vs 1 worker (median of rounds) | CPU-s/s here | tiles/s by round |", "|---|---:|---:|---:|---:|---|",
              *_scaling_rows(result.scaling), "",
              f"Encode end to end ({opts.requests} distinct images, {opts.concurrency} clients): "
              f"{result.encode_tiles_per_s:.2f} tiles/s, {result.encode_ms_per_request:.0f} ms per request", ""]
    before, now, handoff = (preprocess_cores(opts.accelerator_vit_ms, ms)
                            for ms in (work.before_ms, work.uint8_ms, work.handoff_ms))
    lines.append(f"Feed ratio (on paper): a ViT at {opts.accelerator_vit_ms} ms/tile needs {handoff:.1f} preprocessing "
                 f"cores at {work.handoff_ms:.2f} CPU ms/tile resizing on the device, {now:.1f} at "
                 f"{work.uint8_ms:.2f} resizing on the CPU (before: {before:.1f} cores at {work.before_ms:.2f})")
    if result.fidelity:
        from tools.bench.vision_fidelity import format_fidelity

        fast = result.fast_decode_ms
        lines += ["", f"--fast-decode on large JPEGs: {fast['default']:.2f} -> {fast['fast']:.2f} CPU ms per tile "
                  f"({fast['default'] / fast['fast']:.2f}x)", "", format_fidelity(result.fidelity)]
    return "\n".join(lines)


def register(kinds) -> None:
    """Add `dvd bench vision` to the `dvd bench` sub-commands."""
    p = kinds.add_parser("vision", help="one vision replica: time per stage, preprocessing by workers, Encode tiles/s")
    add_model_args(p)
    p.add_argument("--image-dir", default="", help="real photos from this folder (default: the packaged photos)")
    p.add_argument("--synthetic", default="", help="a synthetic size mix instead, e.g. 640x480:1,1920x1080:1")
    p.add_argument("--synthetic-count", type=int, default=12)
    p.add_argument("--workers", default="1,2", help="preprocessing worker counts, comma-separated")
    p.add_argument("--kinds", default="thread,process", help="worker kinds to compare: thread, process")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--scaling-copies", type=int, default=4, help="the image set this many times per scaling run")
    p.add_argument("--requests", type=int, default=16, help="Encode requests in the end-to-end run")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--fidelity", action="store_true", help="also measure --fast-decode on large JPEGs")
    p.add_argument("--accelerator-vit-ms", type=float, default=H100_VIT_MS_PER_TILE,
                   help="ViT ms per tile of the accelerator to feed (default: H100-class InternViT-300M)")
    p.set_defaults(func=main)


def _photos(a) -> tuple[list[photo_sets.Photo], str]:
    if a.image_dir:
        return photo_sets.folder_photos(Path(a.image_dir)), f"real photos from {a.image_dir}"
    if not a.synthetic:
        found = photo_sets.packaged_photos()
        if found:
            return found, "real photos shipped by scikit-image / matplotlib, PNGs re-encoded as JPEG q90"
    mix = a.synthetic or "640x480:1,1024x768:1,1920x1080:1"
    return photo_sets.synthetic_photos(mix, a.synthetic_count), f"synthetic JPEGs, size mix {mix}"


def main(a) -> int:
    from tools.checkpoint import ensure_checkpoint

    workers = tuple(int(w) for w in a.workers.split(",") if w.strip())
    kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
    if not workers or min(workers) < 1 or a.rounds < 1 or not set(kinds) <= {"thread", "process"}:
        raise SystemExit("--workers and --rounds must be positive, --kinds thread and/or process")
    photos, source = _photos(a)
    opts = VisionBenchOptions(Path(ensure_checkpoint(a.preset, Path(a.checkpoint_root))), tuple(photos), source,
                              workers, kinds, a.rounds, a.scaling_copies, a.requests, a.concurrency, a.device,
                              a.dtype, a.threads, a.fidelity, a.accelerator_vit_ms)
    print(format_report(run_vision_bench(opts), opts))
    return 0
