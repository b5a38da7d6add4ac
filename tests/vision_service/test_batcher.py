"""The tile batcher's policy: which images share a ViT forward, what each caller gets back, and
what happens to images still waiting at shutdown. The ViT is a stand-in that returns each tile's
marker value, so a caller getting another image's tiles would show; the real encoder's chunked
forwards are checked against one whole forward at the end."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from dvd.errors import ResourceExhausted, Unavailable
from vision_service.batcher import TileBatcher
from vision_service.encoder import TileEncoder


class MarkerVit:
    """grid [T, 1, 1, 1] = each tile's marker; records every forward's tile count. Each forward
    takes one permit, so a test holds the model busy while more images queue up behind it."""

    def __init__(self) -> None:
        self.forwards: list[int] = []
        self.permits = threading.Semaphore(0)

    def allow(self, forwards: int = 100) -> None:
        self.permits.release(forwards)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.permits.acquire(timeout=10)
        self.forwards.append(pixel_values.shape[0])
        return pixel_values[:, :1, :1, :1].permute(0, 2, 3, 1)  # [T, 1, 1, 1]


def tiles(*markers: float) -> torch.Tensor:
    return torch.tensor(markers).reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()  # [T, 3, 2, 2]


def markers(grid: torch.Tensor) -> list[float]:
    return grid.flatten().tolist()


async def _started(max_batch_tiles: int, max_wait_s: float = 0.0, max_queue: int = 16) -> tuple[TileBatcher, MarkerVit]:
    vit = MarkerVit()
    batcher = TileBatcher(vit, max_batch_tiles, max_wait_s, max_queue)
    batcher.start()
    return batcher, vit


async def _until(predicate) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_images_join_a_batch_while_they_fit_and_the_next_one_waits():
    batcher, vit = await _started(max_batch_tiles=3)
    first = asyncio.create_task(batcher.submit(tiles(1), markers))
    await _until(lambda: batcher.images_in_batch == 1)  # the first forward is running (held at the gate)
    rest = [asyncio.create_task(batcher.submit(tiles(*m), markers)) for m in ([2], [3], [4, 5], [6])]
    await _until(lambda: batcher._queue.qsize() == 4)
    vit.allow()
    results = await asyncio.gather(first, *rest)
    # [2] + [3] fit in 3 tiles; [4, 5] would make 4, so it opens the next batch and [6] joins it.
    assert vit.forwards == [1, 2, 3]
    assert [r.output for r in results] == [[1.0], [2.0], [3.0], [4.0, 5.0], [6.0]]
    assert [r.batch_tiles for r in results] == [1, 2, 2, 3, 3]
    await batcher.stop()


async def test_an_image_bigger_than_the_cap_runs_alone_in_forwards_of_the_cap():
    batcher, vit = await _started(max_batch_tiles=2)
    vit.allow()
    result = await batcher.submit(tiles(1, 2, 3, 4, 5), markers)
    assert vit.forwards == [2, 2, 1]
    assert result.output == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert result.batch_tiles == 5
    await batcher.stop()


async def test_one_image_failing_in_finish_does_not_fail_its_batch_mates():
    batcher, vit = await _started(max_batch_tiles=4, max_wait_s=0.5)

    def broken(grid: torch.Tensor) -> list[float]:
        raise ValueError("bad image")

    vit.allow()
    ok, bad = await asyncio.gather(batcher.submit(tiles(1), markers), batcher.submit(tiles(2), broken),
                                   return_exceptions=True)
    assert ok.output == [1.0] and ok.batch_tiles == 2
    assert isinstance(bad, ValueError)
    await batcher.stop()


async def test_queue_depth_counts_the_held_image_and_stop_fails_every_waiting_one():
    batcher, vit = await _started(max_batch_tiles=2)
    running = asyncio.create_task(batcher.submit(tiles(1, 2), markers))
    await _until(lambda: batcher.images_in_batch == 1)
    waiting = [asyncio.create_task(batcher.submit(tiles(*m), markers)) for m in ([3], [4, 5], [6])]
    await _until(lambda: batcher._queue.qsize() == 3)
    assert batcher.queue_depth == 4  # three queued + one running
    vit.allow(1)  # [1, 2] finishes; [3] runs next, [4, 5] does not fit beside it and is held
    assert (await running).output == [1.0, 2.0]
    await _until(lambda: batcher._held is not None)
    assert batcher.queue_depth == 3  # [6] queued, [4, 5] held, [3] running
    await batcher.stop()
    vit.allow()
    for task in waiting[1:]:
        with pytest.raises(Unavailable):
            await task
    waiting[0].cancel()
    await asyncio.gather(waiting[0], return_exceptions=True)


async def test_a_full_queue_is_refused():
    batcher, vit = await _started(max_batch_tiles=1, max_queue=1)
    running = asyncio.create_task(batcher.submit(tiles(1), markers))
    await _until(lambda: batcher.images_in_batch == 1)
    queued = asyncio.create_task(batcher.submit(tiles(2), markers))
    await _until(lambda: batcher._queue.qsize() == 1)
    with pytest.raises(ResourceExhausted):
        await batcher.submit(tiles(3), markers)
    vit.allow()
    assert [(await t).output for t in (running, queued)] == [[1.0], [2.0]]
    await batcher.stop()


async def test_the_queue_is_bounded_in_tiles_not_images():
    vit = MarkerVit()
    batcher = TileBatcher(vit, max_batch_tiles=2, max_wait_s=0.0, max_queue=100, max_queue_tiles=4)
    batcher.start()
    running = asyncio.create_task(batcher.submit(tiles(1), markers))
    await _until(lambda: batcher.images_in_batch == 1)
    three = asyncio.create_task(batcher.submit(tiles(2, 2, 2), markers))  # 3 tiles waiting
    await _until(lambda: batcher.queued_tiles == 3)
    with pytest.raises(ResourceExhausted, match="tiles"):  # 3 + 2 > 4, though only one image waits
        await batcher.submit(tiles(3, 3), markers)
    one = asyncio.create_task(batcher.submit(tiles(4), markers))  # 3 + 1 fits
    vit.allow()
    assert [(await t).output for t in (running, three, one)] == [[1.0], [2.0, 2.0, 2.0], [4.0]]
    assert batcher.queued_tiles == 0
    big = await batcher.submit(tiles(*[5.0] * 6), markers)  # larger than the bound, into an empty queue
    assert big.output == [5.0] * 6
    await batcher.stop()


async def test_a_cancelled_waiting_image_is_skipped_and_frees_its_tiles():
    batcher, vit = await _started(max_batch_tiles=1)
    running = asyncio.create_task(batcher.submit(tiles(1), markers))
    await _until(lambda: batcher.images_in_batch == 1)
    gone = asyncio.create_task(batcher.submit(tiles(2), markers))
    await _until(lambda: batcher.queued_tiles == 1)
    gone.cancel()  # its caller went away (client disconnect) before its batch started
    vit.allow()
    assert (await running).output == [1.0]
    await _until(lambda: batcher.queued_tiles == 0)
    assert vit.forwards == [1]  # the cancelled image never reached the ViT
    await batcher.stop()


def test_the_encoder_gives_the_same_grid_in_chunks_as_in_one_forward(tiny_ckpt):
    """What the cap relies on: the ViT treats tiles independently, so splitting one image's
    tiles over several forwards changes no value (fp32 on CPU)."""
    encoder = TileEncoder(str(tiny_ckpt), torch.device("cpu"), torch.float32)
    pixel_values = torch.randn(5, 3, encoder.tile_size, encoder.tile_size, generator=torch.Generator().manual_seed(0))
    whole = encoder.vit(pixel_values)
    chunked = torch.cat([encoder.vit(chunk) for chunk in pixel_values.split(2)])
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
