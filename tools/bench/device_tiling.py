"""`python -m tools.bench.device_tiling`: a replica's CPU per tile resizing with Pillow vs on its device.

Method: the same images (the packaged photos, else a synthetic size mix), one thread, alternating
round by round: (a) `preprocess_pixels` as a replica without a device tiler runs it (decode,
Pillow resize, tile); (b) the same with `DeviceTiler` on `--device`: decode, the copy into
page-locked memory, the torch passes launched on the device. CPU time is the calling thread's
(`time.thread_time`), taken before the device is synchronised, so it counts the launches and not
the wait; device time per tile is the wall time of (b) including the final synchronisation. Also
checks the device tiles equal the CPU tiles for every image. Prints JSON (`--json FILE` writes it),
for `scripts/gpu_check_vision.sh`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tools.bench import photos as photo_sets
from vision_service.device_tiling import DeviceTiler
from vision_service.preprocess import ResolvedTiling, preprocess_pixels

SYNTHETIC_MIX = "640x480:1,1024x768:1,1920x1080:1,4032x3024:1"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(images: list[bytes], device: torch.device, rounds: int) -> dict:
    opts, tiler = ResolvedTiling(), DeviceTiler(device)
    tiles = sum(preprocess_pixels(d, opts).num_tiles for d in images)
    equal = all(torch.equal(preprocess_pixels(d, opts, tiler=tiler).pixels.cpu(), preprocess_pixels(d, opts).pixels)
                for d in images)  # also the warm-up of both paths
    cpu, device_cpu, device_wall = [], [], []
    for index in range(rounds):
        for path in ("pillow", "device") if index % 2 == 0 else ("device", "pillow"):
            wall, started = time.perf_counter(), time.thread_time()
            for data in images:
                preprocess_pixels(data, opts, tiler=tiler if path == "device" else None)
            spent = (time.thread_time() - started) * 1000 / tiles
            if path == "device":
                _sync(device)
                device_cpu.append(spent)
                device_wall.append((time.perf_counter() - wall) * 1000 / tiles)
            else:
                cpu.append(spent)
    pillow_ms, device_ms = statistics.median(cpu), statistics.median(device_cpu)
    return {"device": str(device), "exact": tiler.exact, "tiles_equal": equal, "images": len(images), "tiles": tiles,
            "rounds": rounds, "cpu_ms_per_tile_pillow": pillow_ms, "cpu_ms_per_tile_device_resize": device_ms,
            "cpu_work_ratio": pillow_ms / device_ms, "wall_ms_per_tile_device_resize": statistics.median(device_wall)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--synthetic", default="", help="a synthetic size mix instead of the packaged photos, "
                   "e.g. 640x480:1,1920x1080:1,4032x3024:1 (also the fallback where none are installed)")
    p.add_argument("--synthetic-count", type=int, default=8)
    p.add_argument("--json", default="", help="also write the result here")
    a = p.parse_args(argv)
    photos = [] if a.synthetic else photo_sets.packaged_photos()
    photos = photos or photo_sets.synthetic_photos(a.synthetic or SYNTHETIC_MIX, a.synthetic_count)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the CPU time of one preprocessing worker
    try:
        result = measure([ph.data for ph in photos], torch.device(a.device), a.rounds)
    finally:
        torch.set_num_threads(previous)  # callers in-process (tests) keep their setting
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
