"""What a vision replica keeps between the two phases of a multi-image `auto` request.

The published router ranks every tile against all tiles of the request, so a request with
several images (or video frames, encoded on several replicas) is routed first (`Route`: ViT +
router, scores back to the gateway) and encoded second (`Encode` with the request's scores).
The gateway sends both phases of an image to the same replica, which keeps the image's ViT grid
here so the second phase runs only the projectors: the ViT still runs once per tile.

Grids are big ([tiles, 32, 32, C] in the compute dtype, on the compute device) and live briefly,
bounded in bytes; scores are tiny and live as long as cached embeddings do, so a repeated request
finds its scores without running the ViT again. A missing grid only costs a second ViT run.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class RouteEntry:
    scores: torch.Tensor  # [T] compress scores, compute dtype
    grid: torch.Tensor | None  # [T, side, side, C] ViT output, or None once dropped
    scores_at: float
    grid_at: float


class RouteCache:
    def __init__(self, max_grid_bytes: int, grid_ttl_s: float, scores_ttl_s: float, max_entries: int = 100_000) -> None:
        self.max_grid_bytes = max_grid_bytes
        self.grid_ttl_s = grid_ttl_s
        self.scores_ttl_s = scores_ttl_s
        self.max_entries = max_entries
        self.grid_bytes = 0
        self._entries: OrderedDict[str, RouteEntry] = OrderedDict()

    def get(self, key: str) -> RouteEntry | None:
        """The entry with its grid dropped if that has expired; None when the scores have too."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if now - entry.scores_at > self.scores_ttl_s:
            self._drop(key)
            return None
        if entry.grid is not None and now - entry.grid_at > self.grid_ttl_s:
            self._drop_grid(entry)
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, scores: torch.Tensor, grid: torch.Tensor | None) -> None:
        if key in self._entries:
            self._drop(key)
        now = time.monotonic()
        nbytes = 0 if grid is None else grid.numel() * grid.element_size()
        keep_grid = grid if nbytes <= self.max_grid_bytes else None
        self._entries[key] = RouteEntry(scores, keep_grid, now, now)
        if keep_grid is not None:
            self.grid_bytes += nbytes
        self._evict()

    def _evict(self) -> None:
        # Oldest grids go first when over budget; entries (scores) only past max_entries.
        for entry in list(self._entries.values()):
            if self.grid_bytes <= self.max_grid_bytes:
                break
            self._drop_grid(entry)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def _drop_grid(self, entry: RouteEntry) -> None:
        if entry.grid is not None:
            self.grid_bytes -= entry.grid.numel() * entry.grid.element_size()
            entry.grid = None

    def _drop(self, key: str) -> None:
        self._drop_grid(self._entries[key])
        del self._entries[key]
