"""The preprocessing stage of one vision replica: decode, resize and tile, the CPU's share of
preprocessing (the ViT's device rescales and normalises; with a `DeviceTiler` it also resizes and
tiles, and the workers only decode), in a pool of worker threads sized to the CPUs the replica
may use.

Threads, not processes: PIL releases the GIL while it decodes and resamples, numpy while it
copies the planes into tiles, so the workers run in parallel; in threads the tiles need no
pickling back to the event loop's process and can be written straight into page-locked memory
for the copy to a CUDA device (`dvd bench vision` measures both; BENCHMARKS.md). The event loop
only awaits the workers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from vision_service.device_tiling import DeviceTiler
from vision_service.preprocess import ImageTiles, ResolvedTiling


def default_workers() -> int:
    """One worker per CPU this process may run on (its affinity mask, e.g. `taskset` or a
    container's cpuset), not per CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class PreprocessPool:
    """`await run(image bytes, tiling)` -> uint8 tiles, in one of `workers` threads. `preprocess` is
    `preprocess_pixels` or the model cards' `preprocess_pixels_card`, by the checkpoint's layout."""

    def __init__(self, preprocess: Callable[..., ImageTiles], workers: int, max_pixels: int, fast_decode: bool = False,
                 pin_memory: bool = False, tiler: DeviceTiler | None = None) -> None:
        if workers < 1:
            raise ValueError(f"need at least one preprocessing worker, got {workers}")
        self.preprocess = preprocess
        self.workers = workers
        self.max_pixels = max_pixels
        self.fast_decode = fast_decode
        self.pin_memory = pin_memory  # page-locked tiles, for a CUDA ViT
        self.tiler = tiler  # resize and tile on the ViT's device: the workers only decode
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    async def run(self, image: bytes, tiling: ResolvedTiling) -> ImageTiles:
        """Raises ImageDecodeError for bad or oversized images."""
        work = partial(self.preprocess, image, tiling, self.max_pixels, self.fast_decode, self.pin_memory,
                       tiler=self.tiler)
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
