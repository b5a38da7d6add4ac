"""Tiles -> LLM-space embeddings: InternViT, pixel shuffle, MLP projector.

Holds only the vision tower and projector tensors (read from the checkpoint by
`dvd.checkpoint.build_vision_modules`); never the LLM."""

from __future__ import annotations

import torch

from dvd.checkpoint import build_vision_modules


def pixel_shuffle(features: torch.Tensor, scale: float) -> torch.Tensor:
    """Space-to-depth as InternVL does it: [B, W, H, C] -> [B, W*s, H*s, C/s^2].

    With scale 0.5 a 32x32 grid of ViT tokens becomes 16x16 = 256 tokens of 4x the width.
    The view/permute sequence is InternVL's own so features match the reference bit for bit.
    """
    batch, width, height, channels = features.shape
    if (width * scale) % 1 or (height * scale) % 1:
        raise ValueError(f"grid {width}x{height} is not divisible by 1/{scale}")
    x = features.view(batch, width, int(height * scale), int(channels / scale))
    x = x.permute(0, 2, 1, 3).contiguous()  # [B, H*s, W, C/s]
    x = x.view(batch, int(height * scale), int(width * scale), int(channels / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()  # [B, W*s, H*s, C/s^2]


class TileEncoder:
    """Runs the vision half of an InternVL checkpoint on batches of 448px tiles."""

    def __init__(self, checkpoint: str, device: torch.device, dtype: torch.dtype) -> None:
        self.vision_tower, self.projector, self.config = build_vision_modules(checkpoint, dtype=dtype, device=device)
        self.device = device
        self.dtype = dtype
        self.downsample_ratio = float(self.config.downsample_ratio)
        self.feature_layer = self.config.vision_feature_layer
        self.drop_cls = self.config.vision_feature_select_strategy == "default"
        self.hidden_size = int(self.config.text_config.hidden_size)
        self.tile_size = int(self.config.vision_config.image_size[0])
        patches = self.tile_size // int(self.config.vision_config.patch_size[0])
        self.tokens_per_tile = int((patches * self.downsample_ratio) ** 2)

    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [T, 3, tile, tile] -> features [T, tokens_per_tile, hidden] on the compute device."""
        pixel_values = pixel_values.to(self.device, self.dtype)
        if self.feature_layer == -1:
            hidden = self.vision_tower(pixel_values=pixel_values).last_hidden_state  # [T, 1 + P, C]
        else:
            outputs = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
            hidden = outputs.hidden_states[self.feature_layer]
        if self.drop_cls:
            hidden = hidden[:, 1:, :]  # [T, P, C]
        num_tiles, num_patches, channels = hidden.shape
        side = int(num_patches**0.5)
        grid = hidden.reshape(num_tiles, side, side, channels)  # [T, side, side, C]
        shuffled = pixel_shuffle(grid, self.downsample_ratio)  # [T, side/2, side/2, 4C]
        tokens = shuffled.reshape(num_tiles, -1, shuffled.shape[-1])  # [T, 256, 4C]
        return self.projector(tokens)  # [T, 256, hidden]

    def warmup(self) -> None:
        """One tile through the whole path, so the first request does not pay for lazy init."""
        self.encode(torch.zeros(1, 3, self.tile_size, self.tile_size))

    def weight_bytes(self) -> int:
        tensors = {t.data_ptr(): t for m in (self.vision_tower, self.projector) for t in m.state_dict().values()}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def tensor_names(self) -> list[str]:
        """Every parameter and buffer this process holds (tests assert no LLM tensor is here)."""
        names = [f"vision_tower.{n}" for n, _ in self.vision_tower.state_dict().items()]
        return names + [f"multi_modal_projector.{n}" for n, _ in self.projector.state_dict().items()]
