"""The measurements of `dvd bench vision` that run in this process: the time of each stage of
one vision replica's path, today's CPU preprocessing against the uint8 path, and preprocessing
tiles/s by worker count.

`preprocess_before` / `normalize_before` are the vision service's preprocessing before tiles went
to the device as uint8 (HWC tiles from the canvas, a numpy table lookup into float32 on the CPU):
the baseline of these ratios, and the reference of tests/vision_service/test_normalize.py.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from dvd import codec as codecs
from dvd.types import Codec, Compression, VirMode
from vision_service.device_tiling import DeviceTiler
from vision_service.encoder import TileEncoder, VirPlan
from vision_service.normalize import DeviceNormalizer, reference_table
from vision_service.preprocess import ResolvedTiling, choose_grid, decode_image, preprocess_pixels, tile_pixels
from vision_service.resample import default_chunk

STAGES = ("decode", "resize + tile", "resize + tile (on the device)", "normalise (CPU, before)",
          "transfer + normalise (device)", "ViT", "projector", "codec")


def normalize_before(tiles: np.ndarray) -> np.ndarray:
    """tiles: [N, T, T, 3] uint8 -> [N, 3, T, T] float32, as the CPU did it before."""
    table = reference_table()
    out = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), dtype=np.float32)
    for channel in range(3):
        out[:, channel] = table[channel][tiles[..., channel]]
    return out


def tiles_before(image: Image.Image, opts: ResolvedTiling) -> np.ndarray:
    """The canvas cut into [N, T, T, 3] uint8 tiles, as before (the same bytes as `tile_pixels`)."""
    cols, rows = choose_grid(*image.size, opts)
    size, grid_tiles = opts.tile_size, cols * rows
    num_tiles = grid_tiles + (1 if opts.use_thumbnail and grid_tiles > 1 else 0)
    tiles = np.empty((num_tiles, size, size, 3), dtype=np.uint8)
    canvas = np.asarray(image.resize((cols * size, rows * size), Image.Resampling.BICUBIC))
    tiles[:grid_tiles].reshape(rows, cols, size, size, 3)[...] = canvas.reshape(
        rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4)
    if num_tiles > grid_tiles:
        tiles[-1] = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
    return tiles


def preprocess_before(data: bytes, opts: ResolvedTiling) -> torch.Tensor:
    """Bytes -> [N, 3, T, T] float32 on the CPU: the whole of `preprocess` before."""
    return torch.from_numpy(normalize_before(tiles_before(decode_image(data), opts)))


def _timed(fn: Callable, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stage_seconds(encoder: TileEncoder, images: list[bytes], opts: ResolvedTiling, codec: Codec,
                  compression: Compression) -> tuple[dict[str, float], int]:
    """One pass over `images` per group of stages: seconds per stage, tiles in all. The CPU's
    stages run before any model stage: after a forward, torch's idle worker threads keep
    spinning for a while and would take CPU from a decode timed right after it."""
    spent = dict.fromkeys(STAGES, 0.0)
    plan, device, tiled = VirPlan(VirMode.OFF), encoder.device, []
    tiler = DeviceTiler(device)
    for data in images:
        image, spent["decode"] = _add(spent["decode"], *_timed(decode_image, data))
        tiles, spent["resize + tile"] = _add(spent["resize + tile"], *_timed(tile_pixels, image, opts))
        started = time.perf_counter()
        tile_pixels(image, opts, tiler=tiler)
        _sync(device)
        spent["resize + tile (on the device)"] += time.perf_counter() - started
        hwc = tiles.pixels.permute(0, 2, 3, 1).numpy()
        _, spent["normalise (CPU, before)"] = _add(spent["normalise (CPU, before)"], *_timed(normalize_before, hwc))
        tiled.append(tiles.pixels)
    for pixels in tiled:
        started = time.perf_counter()
        model_input = encoder.model_input(pixels)
        _sync(device)
        spent["transfer + normalise (device)"] += time.perf_counter() - started
        started = time.perf_counter()
        grid = encoder.vit(model_input)
        _sync(device)
        spent["ViT"] += time.perf_counter() - started
        features, spent["projector"] = _add(spent["projector"], *_timed(encoder.finish, grid, plan))
        _, spent["codec"] = _add(spent["codec"], *_timed(codecs.encode, features.features, codec, compression))
    return spent, sum(p.shape[0] for p in tiled)


def _add(total: float, out, seconds: float):
    return out, total + seconds


@dataclass(frozen=True)
class CpuWork:
    """Median CPU ms per tile over rounds, one thread, the two interleaved. CPU time of the
    thread, not wall time: on a shared machine the wall time also counts waiting for a core."""

    before_ms: float  # decode, resize, tile, normalise on the CPU (today's `preprocess`)
    uint8_ms: float  # decode, resize, tile into uint8 planes (a GPU replica resizing on its CPU)
    handoff_ms: float  # decode + the copy for the device (a GPU replica resizing on the device)
    rounds: list[tuple[float, float, float]]


def decode_and_hand_off(data: bytes, opts: ResolvedTiling, tiler: DeviceTiler) -> torch.Tensor:
    """What a replica that resizes on its device leaves its CPU (`tile_pixels` with a tiler): decode,
    choose the grid, copy the decoded bytes into the buffer the device copies from."""
    image = decode_image(data)
    choose_grid(*image.size, opts)
    return tiler.upload(image)


def cpu_work_per_tile(images: list[bytes], opts: ResolvedTiling, rounds: int) -> CpuWork:
    tiles = sum(preprocess_pixels(d, opts).num_tiles for d in images)
    tiler = DeviceTiler(torch.device("cpu"))  # upload() on a CPU tiler: the staging copy, no transfer
    paths = {"before": preprocess_before, "uint8": preprocess_pixels,
             "handoff": lambda data, opts: decode_and_hand_off(data, opts, tiler)}
    samples = []
    for index in range(rounds):
        times = {}
        for name in list(paths) if index % 2 == 0 else list(paths)[::-1]:
            started = time.thread_time()
            for data in images:
                paths[name](data, opts)
            times[name] = (time.thread_time() - started) * 1000 / tiles
        samples.append((times["before"], times["uint8"], times["handoff"]))
    return CpuWork(*(statistics.median(s[i] for s in samples) for i in range(3)), samples)


class _CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched: on CUDA, roughly the kernel launches."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def device_ops_per_image(images: list[bytes], opts: ResolvedTiling) -> float:
    """Mean torch ops per image that resizing and tiling on a CUDA device dispatches: counted on
    the CPU with CUDA's chunk size, so the same sequence of ops."""
    tiler, counter = DeviceTiler(torch.device("cpu"), default_chunk(torch.device("cuda"))), _CountOps()
    decoded = [decode_image(d) for d in images]
    with counter:
        for image in decoded:
            tile_pixels(image, opts, tiler=tiler)
    return counter.count / len(images)


def normalise_per_tile(images: list[bytes], opts: ResolvedTiling, rounds: int, threads: int = 1) -> dict[str, float]:
    """Median CPU ms per tile (this thread's CPU time): the CPU table lookup before vs the CPU
    normaliser now, with `threads` torch threads (1: all in this thread), interleaved."""
    pixels = [preprocess_pixels(d, opts).pixels for d in images]
    hwc = [p.permute(0, 2, 3, 1).contiguous().numpy() for p in pixels]
    tiles = sum(p.shape[0] for p in pixels)
    normalizer = DeviceNormalizer(torch.device("cpu"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: dict[str, list[float]] = {"before": [], "now": []}
    try:
        for _ in range(rounds):
            # One image at a time, its result dropped before the next: a replica holds one batch,
            # not the whole set (which would time page faults rather than normalisation).
            for name, run in (("before", lambda: all(normalize_before(t) is not None for t in hwc)),
                              ("now", lambda: all(normalizer(p) is not None for p in pixels))):
                started = time.thread_time()
                run()
                samples[name].append((time.thread_time() - started) * 1000 / tiles)
    finally:
        torch.set_num_threads(previous)
    return {name: statistics.median(values) for name, values in samples.items()}


def _pool(kind: str, workers: int) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    # spawn: a forked child of a process with torch's thread pools running can hang
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _tile_count(data: bytes, opts: ResolvedTiling) -> int:
    return preprocess_pixels(data, opts).num_tiles


@dataclass(frozen=True)
class Scaling:
    tiles_per_s: dict[tuple[str, int], list[float]]  # (pool kind, workers) -> one rate per round
    cpu_per_wall: dict[tuple[str, int], list[float]]  # this process's CPU-s per wall s: threads in parallel


def worker_scaling(images: list[bytes], opts: ResolvedTiling, workers: tuple[int, ...], kinds: tuple[str, ...],
                   rounds: int) -> Scaling:
    """Preprocessing tiles/s (bytes -> uint8 tiles back in this process) by pool kind and worker
    count, every pool started and warmed before timing, configurations interleaved round by round.
    For threads, this process's CPU time per wall second shows how many ran at once (the GIL
    would hold it near 1); for processes it counts only the unpickling here."""
    tiles = sum(preprocess_pixels(d, opts).num_tiles for d in images)
    pools = {(kind, n): _pool(kind, n) for kind in kinds for n in workers}
    try:
        for (_, n), pool in pools.items():
            list(pool.map(_tile_count, images[: 2 * n], [opts] * 2 * n))  # start and warm every worker
        result = Scaling({key: [] for key in pools}, {key: [] for key in pools})
        for index in range(rounds):
            keys = list(pools) if index % 2 == 0 else list(pools)[::-1]
            for key in keys:
                started, cpu = time.perf_counter(), time.process_time()
                list(pools[key].map(preprocess_pixels, images, [opts] * len(images)))
                elapsed = time.perf_counter() - started
                result.tiles_per_s[key].append(tiles / elapsed)
                result.cpu_per_wall[key].append((time.process_time() - cpu) / elapsed)
        return result
    finally:
        for pool in pools.values():
            pool.shutdown()
