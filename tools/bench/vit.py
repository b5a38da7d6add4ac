"""`dvd bench vit`: what one image's ViT costs when its tiles run in forwards of different widths,
side by side in one process: the measurement behind a vision replica's `--max-batch-tiles`.

Method: the vision modules are loaded as a replica loads them (`TileEncoder`: the checkpoint's
vision tensors only, the service's device and dtype rules). One image's worth of random tiles
(`--tiles`, 10 = a 1344x1344 image) goes through the ViT in forwards of each width w (the
tiles split into chunks of w, the batcher's `max_batch_tiles`); every width runs `repeats`
times after one warm-up pass, interleaved round by round so drift lands on all widths alike,
and the median is reported with its ratio to the widest. The grids of every width are compared
with the widest one's: splitting tiles over forwards must not change a value."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vision_service.batcher import vit_in_forwards


@dataclass(frozen=True)
class VitBenchOptions:
    checkpoint: Path
    widths: tuple[int, ...] = (1, 2, 5, 10)
    tiles: int = 10
    repeats: int = 5
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default


@dataclass(frozen=True)
class VitBenchResult:
    device: str
    ms_per_image: dict[int, float]  # forward width -> median ms for the whole image
    max_abs_diff: dict[int, float]  # forward width -> largest difference from the widest width's grid


def run_vit_bench(opts: VitBenchOptions) -> VitBenchResult:
    from dvd.config import DeviceConfig
    from dvd.devices import describe, resolve_device, resolve_dtype
    from vision_service.encoder import TileEncoder

    if opts.threads:
        torch.set_num_threads(opts.threads)
    device_cfg = DeviceConfig(device=opts.device, dtype=opts.dtype)
    device = resolve_device(device_cfg)
    encoder = TileEncoder(str(opts.checkpoint), device, resolve_dtype(device_cfg, device))
    size = encoder.tile_size
    pixel_values = torch.randn(opts.tiles, 3, size, size, generator=torch.Generator().manual_seed(0))  # [T, 3, S, S]
    grids = {w: _forward(encoder, pixel_values, w) for w in opts.widths}  # warm-up, and the values to compare
    times: dict[int, list[float]] = {w: [] for w in opts.widths}
    for _ in range(opts.repeats):
        for width in opts.widths:
            started = time.perf_counter()
            _forward(encoder, pixel_values, width)
            times[width].append((time.perf_counter() - started) * 1000)
    widest = grids[max(opts.widths)]
    diffs = {w: float((g.float() - widest.float()).abs().max()) for w, g in grids.items()}
    desc = f"{describe(device, encoder.dtype)}, {torch.get_num_threads()} torch threads"
    return VitBenchResult(desc, {w: statistics.median(t) for w, t in times.items()}, diffs)


def _forward(encoder, pixel_values: torch.Tensor, width: int) -> torch.Tensor:
    grid = vit_in_forwards(encoder.vit, pixel_values, width)  # [T, side, side, C]: as the batcher runs it
    if grid.is_cuda:
        torch.cuda.synchronize()
    return grid


def recommend_width(result: VitBenchResult, tolerance: float = 0.05) -> int:
    """The narrowest forward width whose cost per image is within `tolerance` of the cheapest:
    wider forwards only make images wait for one another (a `--max-batch-tiles` to start from)."""
    best = min(result.ms_per_image.values())
    return min(w for w, ms in result.ms_per_image.items() if ms <= best * (1 + tolerance))


def to_json(result: VitBenchResult, opts: VitBenchOptions) -> dict:
    return {"tool": "dvd bench vit", "checkpoint": str(opts.checkpoint), "device": result.device,
            "tiles": opts.tiles, "repeats": opts.repeats,
            "ms_per_tile": {str(w): ms / opts.tiles for w, ms in result.ms_per_image.items()},
            "max_abs_diff_vs_widest": {str(w): d for w, d in result.max_abs_diff.items()},
            "recommended_max_batch_tiles": recommend_width(result)}


def format_table(result: VitBenchResult, opts: VitBenchOptions) -> str:
    widest = result.ms_per_image[max(opts.widths)]
    lines = [f"ViT cost of one {opts.tiles}-tile image by forward width: {opts.checkpoint.name}, {result.device}",
             f"median of {opts.repeats}, widths interleaved", "",
             "| tiles per forward | ms per image | ms per tile | vs widest | max abs diff vs widest |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {w} | {ms:.1f} | {ms / opts.tiles:.1f} | {ms / widest:.2f}x | {result.max_abs_diff[w]:.2e} |"
              for w, ms in result.ms_per_image.items()]
    return "\n".join(lines)


def add_model_args(p) -> None:
    """The checkpoint and where it runs: the flags of the benches that load vision modules."""
    p.add_argument("--preset", default="small", help="a preset or a checkpoint dir")
    p.add_argument("--checkpoint-root", default="checkpoints")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")


def register(kinds) -> None:
    """Add `dvd bench vit` to the `dvd bench` sub-commands."""
    p = kinds.add_parser("vit", help="ViT cost per image by tiles per forward (sizing --max-batch-tiles)")
    add_model_args(p)
    p.add_argument("--widths", default="1,2,5,10", help="tiles per forward, comma-separated")
    p.add_argument("--tiles", type=int, default=10, help="tiles of the image (10: a 1344x1344 image)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="", help="also write the curve and the recommended width to this file")
    p.set_defaults(func=main)


def main(a) -> int:
    from tools.checkpoint import ensure_checkpoint

    widths = tuple(int(w) for w in a.widths.split(",") if w.strip())
    if not widths or min(widths) < 1 or a.tiles < 1 or a.repeats < 1:
        raise SystemExit("widths, --tiles and --repeats must be positive")
    opts = VitBenchOptions(Path(ensure_checkpoint(a.preset, Path(a.checkpoint_root))), widths, a.tiles, a.repeats,
                           a.device, a.dtype, a.threads)
    result = run_vit_bench(opts)
    print(format_table(result, opts))
    print(f"recommended --max-batch-tiles: {recommend_width(result)} (narrowest width within 5% of the cheapest)")
    if a.json:
        Path(a.json).write_text(json.dumps(to_json(result, opts), indent=1) + "\n")
    return 0


if __name__ == "__main__":  # scripts/gpu_check_vision.sh: without the whole CLI's imports (bare GPU machines)
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.bench.vit")
    register(parser.add_subparsers(dest="kind", required=True))
    args = parser.parse_args()
    raise SystemExit(args.func(args))
