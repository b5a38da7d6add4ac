"""A request's router settings (`VirOptions`) -> the plan the encoder follows, with this
replica's defaults: the mode from `--vir` or the checkpoint (auto when its config sets
`flash_mode`), thresholds from the flags or the checkpoint's `flash_*_threshold`."""

from __future__ import annotations

from dvd.config import VisionConfig
from dvd.errors import InvalidRequest
from dvd.types import VirMode, VirOptions
from vision_service.encoder import TileEncoder, VirPlan


class RouterPolicy:
    def __init__(self, cfg: VisionConfig, encoder: TileEncoder) -> None:
        self.has_router = encoder.has_router
        checkpoint_mode = VirMode.AUTO if encoder.has_router and encoder.flash_mode else VirMode.OFF
        self.default_mode = cfg.vir or checkpoint_mode
        self.relative = (encoder.relative_threshold if cfg.vir_relative_threshold is None
                         else cfg.vir_relative_threshold)
        self.absolute = (encoder.absolute_threshold if cfg.vir_absolute_threshold is None
                         else cfg.vir_absolute_threshold)

    def plan(self, vir: VirOptions) -> VirPlan:
        """The effective plan; checkpoints without the router have one path (every tile 256 tokens)."""
        mode = vir.mode or self.default_mode
        if not self.has_router:
            if mode is VirMode.MAX:
                raise InvalidRequest("vir=max needs an InternVL3.5-Flash checkpoint (it has no ViR router)")
            return VirPlan(VirMode.OFF)
        relative = self.relative if vir.relative_threshold is None else vir.relative_threshold
        absolute = self.absolute if vir.absolute_threshold is None else vir.absolute_threshold
        group = vir.group_scores if mode is VirMode.AUTO else ()
        return VirPlan(mode, relative, absolute, group)

    def require_router(self) -> None:
        if not self.has_router:
            raise InvalidRequest("this vision replica's checkpoint has no ViR router (not InternVL3.5-Flash)")

    @property
    def effective_default(self) -> VirMode:
        """The mode a request without `vir` gets."""
        return self.default_mode if self.has_router else VirMode.OFF

    def key_text(self) -> str:
        """The defaults that decide embeddings, for the replica's cache namespace."""
        return f"{self.effective_default.value}|{self.relative!r}|{self.absolute!r}"
