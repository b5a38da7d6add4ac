"""Tiles -> LLM-space embeddings: InternViT, pixel shuffle, MLP projector; on InternVL3.5-Flash
checkpoints also the Visual Resolution Router, which sends each tile through either mlp1 (0.5
shuffle, 256 tokens) or mlp2 (0.25 shuffle, 64 tokens). The ViT runs once per tile; only the
projector each tile needs runs.

Holds only the vision tensors (read by `vision_service.modules.build_vision_modules`); never the LLM.
The three steps are separate (`vit`, `compress_scores`, `project`) because the batcher runs the
ViT over many images' tiles at once and then finishes each image on its own slice, and because a
multi-image `auto` request scores every image first and projects once the request's scores are in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dvd.checkpoint.original import DEFAULT_ABSOLUTE_THRESHOLD, DEFAULT_RELATIVE_THRESHOLD
from dvd.types import VirMode
from vision_service.modules import build_vision_modules
from vision_service.normalize import normalizer_for
from vision_service.vir import decide


def pixel_shuffle(features: torch.Tensor, scale: float) -> torch.Tensor:
    """Space-to-depth as InternVL does it: [B, W, H, C] -> [B, W*s, H*s, C/s^2].

    With scale 0.5 a 32x32 grid of ViT tokens becomes 16x16 = 256 tokens of 4x the width; with
    0.25 (Flash's mlp2 path) 8x8 = 64 tokens of 16x the width. The view/permute sequence is
    InternVL's own so features match the reference bit for bit.
    """
    batch, width, height, channels = features.shape
    if (width * scale) % 1 or (height * scale) % 1:
        raise ValueError(f"grid {width}x{height} is not divisible by 1/{scale}")
    x = features.view(batch, width, int(height * scale), int(channels / scale))
    x = x.permute(0, 2, 1, 3).contiguous()  # [B, H*s, W, C/s]
    x = x.view(batch, int(height * scale), int(width * scale), int(channels / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()  # [B, W*s, H*s, C/s^2]


@dataclass(frozen=True)
class VirPlan:
    """How the router treats one image's tiles: the effective mode and thresholds, and the scores
    of every tile of the request to rank against (empty: the image's own tiles)."""

    mode: VirMode
    relative: float = DEFAULT_RELATIVE_THRESHOLD
    absolute: float = DEFAULT_ABSOLUTE_THRESHOLD
    group: tuple[float, ...] = ()


@dataclass(frozen=True)
class TileFeatures:
    """One image's projected features, tiles in order."""

    features: torch.Tensor  # [sum(tile_tokens), hidden] on the CPU
    tile_tokens: tuple[int, ...]  # 256 per tile, 64 for a compressed one


class TileEncoder:
    """Runs the vision half of an InternVL(-Flash) checkpoint on batches of 448px tiles."""

    def __init__(self, checkpoint: str, device: torch.device, dtype: torch.dtype) -> None:
        modules = build_vision_modules(checkpoint, dtype=dtype, device=device)
        self.vision_tower, self.projector, self.config = modules.vision_tower, modules.projector, modules.config
        self.flash = modules.flash  # ViR router + mlp2, or None
        self.device = device
        self.dtype = dtype
        self.normalizer = normalizer_for(device)
        self.downsample_ratio = float(self.config.downsample_ratio)
        self.feature_layer = self.config.vision_feature_layer
        self.drop_cls = self.config.vision_feature_select_strategy == "default"
        self.hidden_size = int(self.config.text_config.hidden_size)
        self.tile_size = int(self.config.vision_config.image_size[0])
        patches = self.tile_size // int(self.config.vision_config.patch_size[0])
        self.tokens_per_tile = int((patches * self.downsample_ratio) ** 2)
        # The published model routes only when its config says flash_mode; the router is usable either way.
        self.flash_mode = bool(getattr(self.config, "flash_mode", False))
        self.relative_threshold = float(getattr(self.config, "flash_relative_threshold", DEFAULT_RELATIVE_THRESHOLD))
        self.absolute_threshold = float(getattr(self.config, "flash_absolute_threshold", DEFAULT_ABSOLUTE_THRESHOLD))

    @property
    def has_router(self) -> bool:
        return self.flash is not None

    @torch.inference_mode()
    def model_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[T, 3, tile, tile] uint8 pixels (or float32, already normalised) -> the ViT's input on
        the compute device. Pixels travel as bytes (4x fewer than float32) from page-locked memory,
        without blocking this thread, and are rescaled and normalised on the device."""
        if pixel_values.dtype != torch.uint8:
            return pixel_values.to(self.device, self.dtype)
        if self.device.type == "cuda" and pixel_values.device.type == "cpu":  # tiles cut on the device stay there
            staged = pixel_values if pixel_values.is_pinned() else pixel_values.pin_memory()
            pixel_values = staged.to(self.device, non_blocking=True)
        return self.normalizer(pixel_values).to(self.dtype)

    @torch.inference_mode()
    def vit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [T, 3, tile, tile] uint8 or normalised float32 -> ViT grid [T, side, side, C]
        on the compute device."""
        pixel_values = self.model_input(pixel_values)
        if self.feature_layer == -1:
            hidden = self.vision_tower(pixel_values=pixel_values).last_hidden_state  # [T, 1 + P, C]
        else:
            outputs = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
            hidden = outputs.hidden_states[self.feature_layer]
        if self.drop_cls:
            hidden = hidden[:, 1:, :]  # [T, P, C]
        num_tiles, num_patches, channels = hidden.shape
        side = int(num_patches**0.5)
        return hidden.reshape(num_tiles, side, side, channels)

    @torch.inference_mode()
    def compress_scores(self, grid: torch.Tensor) -> torch.Tensor:
        """grid: [T, side, side, C] -> [T] router compress scores, in the compute dtype."""
        return self.flash.compress_scores(grid.reshape(grid.shape[0], -1, grid.shape[-1]))

    @torch.inference_mode()
    def finish(self, grid: torch.Tensor, plan: VirPlan) -> TileFeatures:
        """Decide each tile's path (router only in auto) and run just the projectors needed."""
        num_tiles = grid.shape[0]
        if plan.mode is VirMode.AUTO:
            scores = self.compress_scores(grid)
            group = torch.tensor(plan.group, dtype=torch.float32) if plan.group else scores
            compress = decide(scores, group, plan.relative, plan.absolute)
        else:
            compress = torch.full((num_tiles,), plan.mode is VirMode.MAX, dtype=torch.bool, device=grid.device)
        return self.project(grid, compress)

    @torch.inference_mode()
    def project(self, grid: torch.Tensor, compress: torch.Tensor) -> TileFeatures:
        """grid: [T, side, side, C]; compress: [T] bool -> features, mlp2 for compressed tiles, else mlp1."""
        if not bool(compress.any()):
            full = self._mlp1(grid)  # [T, 256, H]
            return TileFeatures(full.reshape(-1, full.shape[-1]).cpu(), (self.tokens_per_tile,) * grid.shape[0])
        keep = (~compress).nonzero().flatten()
        squeeze = compress.nonzero().flatten()
        per_tile: list[torch.Tensor | None] = [None] * grid.shape[0]
        if keep.numel():
            for index, features in zip(keep.tolist(), self._mlp1(grid[keep])):  # each [256, H]
                per_tile[index] = features
        for index, features in zip(squeeze.tolist(), self._mlp2(grid[squeeze])):  # each [64, H]
            per_tile[index] = features
        tile_tokens = tuple(int(f.shape[0]) for f in per_tile)
        return TileFeatures(torch.cat(per_tile).cpu(), tile_tokens)

    def _mlp1(self, grid: torch.Tensor) -> torch.Tensor:
        shuffled = pixel_shuffle(grid, self.downsample_ratio)  # [T, side/2, side/2, 4C]
        return self.projector(shuffled.reshape(grid.shape[0], -1, shuffled.shape[-1]))  # [T, 256, H]

    def _mlp2(self, grid: torch.Tensor) -> torch.Tensor:
        if self.flash is None:
            raise RuntimeError("this checkpoint has no mlp2 (not an InternVL3.5-Flash checkpoint)")
        shuffled = pixel_shuffle(grid, self.downsample_ratio**2)  # [T, side/4, side/4, 16C]
        return self.flash.mlp2(shuffled.reshape(grid.shape[0], -1, shuffled.shape[-1]))  # [T, 64, H]

    def encode(self, pixel_values: torch.Tensor, plan: VirPlan | None = None) -> TileFeatures:
        """The whole path for one image's tiles: ViT, router, projectors."""
        return self.finish(self.vit(pixel_values), plan or VirPlan(VirMode.OFF))

    def warmup(self) -> None:
        """One tile through every path, so the first request does not pay for lazy init."""
        tile = torch.zeros(1, 3, self.tile_size, self.tile_size, dtype=torch.uint8)  # the path requests take
        modes = (VirMode.OFF, VirMode.AUTO, VirMode.MAX) if self.has_router else (VirMode.OFF,)
        for mode in modes:
            self.encode(tile, VirPlan(mode, self.relative_threshold, self.absolute_threshold))

    def weight_bytes(self) -> int:
        modules = [m for m in (self.vision_tower, self.projector, self.flash) if m is not None]
        tensors = {t.data_ptr(): t for m in modules for t in m.state_dict().values()}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def tensor_names(self) -> list[str]:
        """Every parameter and buffer this process holds (tests assert no LLM tensor is here)."""
        names = [f"vision_tower.{n}" for n, _ in self.vision_tower.state_dict().items()]
        names += [f"multi_modal_projector.{n}" for n, _ in self.projector.state_dict().items()]
        return names + (list(self.flash.state_dict()) if self.flash is not None else [])
