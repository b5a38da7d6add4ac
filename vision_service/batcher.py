"""Batches tiles from concurrent Encode calls into bounded ViT batches.

The first waiting image opens a batch; more images join while they fit in `max_batch_tiles`
tiles, until `max_wait_s` has passed. An image that does not fit waits for the next batch (so
every image in a batch is delivered one ViT forward after the batch starts, not several); an
image bigger than the cap runs alone, in forwards of `max_batch_tiles`. The model runs in one
worker thread so the event loop keeps accepting requests while the ViT is busy. The ViT runs over the whole
batch; each image is then finished on its own slice of the ViT output by the job's `finish`
(router and projectors, which depend on the image's router mode), in the same thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from dvd.errors import ResourceExhausted, Unavailable


def vit_in_forwards(vit: Callable[[torch.Tensor], torch.Tensor], tiles: torch.Tensor, width: int) -> torch.Tensor:
    """tiles [T, 3, tile, tile] through `vit` in forwards of at most `width` tiles -> [T, side, side, C]."""
    return torch.cat([vit(chunk) for chunk in tiles.split(width)])


def concat_tiles(parts: list[torch.Tensor]) -> torch.Tensor:
    """The batch's tiles in one tensor; page-locked if its parts are, so the copy to a CUDA
    device stays non-blocking without another copy. One image's tiles are used as they are."""
    if len(parts) == 1:
        return parts[0]
    if len({p.device for p in parts}) > 1:  # an image tiled on the CPU (device out of memory) among device ones
        parts = [p.cpu() for p in parts]
    first = parts[0]
    out = torch.empty((sum(p.shape[0] for p in parts), *first.shape[1:]), dtype=first.dtype, device=first.device,
                      pin_memory=first.device.type == "cpu" and first.is_pinned())
    return torch.cat(parts, out=out)


@dataclass
class _Job:
    pixel_values: torch.Tensor  # [T, 3, tile, tile]
    finish: Callable[[torch.Tensor], Any]  # this image's ViT grid [T, side, side, C] -> its result
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def num_tiles(self) -> int:
        return self.pixel_values.shape[0]


@dataclass(frozen=True)
class _Failed:
    error: Exception


@dataclass(frozen=True)
class BatchResult:
    output: Any  # what the job's `finish` returned
    queue_ns: int
    encode_ns: int
    batch_tiles: int


class TileBatcher:
    """`await submit(pixel_values, finish)` -> BatchResult; call `start()` inside the event loop."""

    def __init__(self, vit: Callable[[torch.Tensor], torch.Tensor], max_batch_tiles: int,
                 max_wait_s: float, max_queue: int, max_queue_tiles: int = 0) -> None:
        self._vit = vit
        self.max_batch_tiles = max_batch_tiles
        self.max_wait_s = max_wait_s
        # Bounded in tiles (what the queue's memory and wait scale with), and in images as well.
        self.max_queue_tiles = max_queue_tiles
        self.queued_tiles = 0  # tiles submitted whose batch has not started
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._held: _Job | None = None  # taken from the queue but too big for the last batch: next
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vit")
        self._task: asyncio.Task | None = None
        self.images_in_batch = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tile-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        waiting = [self._held] if self._held is not None else []
        self._held = None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(Unavailable("vision replica is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queue_depth(self) -> int:
        """Images waiting plus images in the batch now running: this replica's load."""
        return self._queue.qsize() + (self._held is not None) + self.images_in_batch

    async def submit(self, pixel_values: torch.Tensor, finish: Callable[[torch.Tensor], Any]) -> BatchResult:
        """Run the ViT over `pixel_values` [T, 3, tile, tile] in some batch, then `finish` on the result."""
        job = _Job(pixel_values, finish, asyncio.get_running_loop().create_future())
        if self.max_queue_tiles and self.queued_tiles and self.queued_tiles + job.num_tiles > self.max_queue_tiles:
            raise ResourceExhausted(f"vision queue is full ({self.queued_tiles} tiles waiting, limit "
                                    f"{self.max_queue_tiles})")
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ResourceExhausted(f"vision queue is full ({self._queue.maxsize} images waiting)") from None
        self.queued_tiles += job.num_tiles
        return await job.future

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the model thread, between batches (projector-only work on cached ViT output)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            self.queued_tiles -= sum(j.num_tiles for j in jobs)
            jobs = [j for j in jobs if not j.future.cancelled()]  # their callers went away: skip them
            if not jobs:
                continue
            started = time.perf_counter_ns()
            self.images_in_batch = len(jobs)
            try:
                outputs = await loop.run_in_executor(self._executor, self._encode_all, jobs)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting caller
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self.images_in_batch = 0
            self._deliver(jobs, outputs, started, time.perf_counter_ns() - started)

    async def _collect(self) -> list[_Job]:
        jobs = [self._held or await self._queue.get()]
        self._held = None
        num_tiles = jobs[0].num_tiles
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while num_tiles < self.max_batch_tiles:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0 and self._queue.empty():
                break
            try:
                job = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if num_tiles + job.num_tiles > self.max_batch_tiles:
                self._held = job
                break
            jobs.append(job)
            num_tiles += job.num_tiles
        return jobs

    def _encode_all(self, jobs: list[_Job]) -> list[Any]:
        tiles = concat_tiles([j.pixel_values for j in jobs])  # [sum T, 3, tile, tile]
        grid = vit_in_forwards(self._vit, tiles, self.max_batch_tiles)  # [sum T, s, s, C]
        outputs, offset = [], 0
        for job in jobs:
            n = job.num_tiles
            try:
                outputs.append(job.finish(grid[offset : offset + n]))
            except Exception as exc:  # noqa: BLE001 - one image's failure is that caller's, not the batch's
                outputs.append(_Failed(exc))
            offset += n
        return outputs

    def _deliver(self, jobs: list[_Job], outputs: list[Any], started_ns: int, encode_ns: int) -> None:
        batch_tiles = sum(job.num_tiles for job in jobs)
        for job, output in zip(jobs, outputs):
            if job.future.done():
                continue
            if isinstance(output, _Failed):
                job.future.set_exception(output.error)
            else:
                job.future.set_result(BatchResult(output, started_ns - job.enqueued_ns, encode_ns, batch_tiles))
