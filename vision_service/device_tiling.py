"""Resize and tile on the ViT's device: the CPU decodes the image and hands its bytes over; the
canvas resize, the cut into tiles and the thumbnail run there, in Pillow's exact arithmetic
(`vision_service.resample`), so the tiles are the bytes `tile_pixels` makes on the CPU.

Why: after decoding, Pillow's resampling is the bulk of a replica's CPU time per tile, and on a
GPU replica the CPU is what runs out first (BENCHMARKS.md, "Vision preprocessing"). Moving it
moves the CPU's share to decode + one copy into page-locked memory + the kernel launches.

`DeviceTiler` checks itself on its device at construction against the installed Pillow (both
pass orders, up- and down-scales), as `DeviceNormalizer` does; where the bytes differ (a Pillow
release that changed its arithmetic) it reports `exact = False` and the replica keeps resizing on
the CPU. On a CPU device the torch passes are slower than Pillow's C (`dvd bench vision`), so a
CPU replica resizes with Pillow unless told otherwise (`--resize-on-device on`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from vision_service.resample import resize

log = logging.getLogger(__name__)

# (source (width, height), target (width, height)): upscale, downscale, each pass order, one
# axis unchanged, and a thumbnail-like squeeze.
_PROBES = (((37, 23), (64, 40)), ((61, 97), (29, 31)), ((50, 10), (50, 21)), ((120, 45), (32, 32)), ((7, 90), (33, 12)))


class DeviceTiler:
    """A decoded RGB image -> its uint8 tiles [N, 3, T, T] on `device`."""

    def __init__(self, device: torch.device, chunk_elements: int | None = None) -> None:
        self.device = device
        self.chunk_elements = chunk_elements  # None: `resample`'s default for the device
        self.pin_memory = device.type == "cuda"
        self.exact = self._matches_pillow()
        if not self.exact:
            log.warning("resizing on %s does not match this Pillow release bit for bit; resizing on the CPU", device)

    def upload(self, image: Image.Image) -> torch.Tensor:
        """The CPU's whole share: the decoded bytes [H, W, 3] copied once into (page-locked, on
        CUDA) memory and sent to the device without blocking this thread."""
        pixels = np.asarray(image)  # [H, W, 3] uint8, read-only (Pillow's own copy of its bytes)
        staged = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=self.pin_memory)
        staged.numpy()[...] = pixels
        return staged.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def tiles(self, image: Image.Image, grid: tuple[int, int], tile_size: int, thumbnail: bool) -> torch.Tensor:
        """The canvas (cols x rows tiles) cut row-major, then the thumbnail (the whole image
        squeezed to one tile) when asked; as `preprocess.tile_pixels` cuts them."""
        cols, rows = grid
        source = self.upload(image)  # [H, W, 3]
        canvas = resize(source, (cols * tile_size, rows * tile_size), self.chunk_elements)  # [rows*T, cols*T, 3]
        tiles = canvas.view(rows, tile_size, cols, tile_size, 3).permute(0, 2, 4, 1, 3)  # [rows, cols, 3, T, T]
        parts = [tiles.reshape(rows * cols, 3, tile_size, tile_size)]
        if thumbnail:
            thumb = resize(source, (tile_size, tile_size), self.chunk_elements)  # [T, T, 3]
            parts.append(thumb.permute(2, 0, 1)[None])  # [1, 3, T, T]
        return torch.cat(parts)

    def _matches_pillow(self) -> bool:
        rng = np.random.default_rng(0)
        for (width, height), target in _PROBES:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            expected = np.asarray(Image.fromarray(pixels).resize(target, Image.Resampling.BICUBIC))
            got = resize(torch.from_numpy(pixels).to(self.device), target).cpu().numpy()
            if not np.array_equal(got, expected):
                return False
        return True


def device_tiler(setting: str, device: torch.device) -> DeviceTiler | None:
    """The replica's tiler for `VisionConfig.resize_on_device`: the device resizes and tiles when
    told to ("on"; "auto": on CUDA) and matches the installed Pillow bit for bit; otherwise
    (None) the preprocessing workers resize with Pillow."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    tiler = DeviceTiler(device)
    return tiler if tiler.exact else None
