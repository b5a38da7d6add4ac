"""Pick the compute device, dtype and attention backend once, at startup."""

from __future__ import annotations

import importlib.util
import logging

import torch

from dvd.config import DeviceConfig

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(cfg: DeviceConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} requested but CUDA is not available")
    return device


def resolve_dtype(cfg: DeviceConfig, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless configured (fp32 keeps CPU outputs exact)."""
    if cfg.dtype != "auto":
        return _DTYPES[cfg.dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def flash_attn_available() -> bool:
    """True only when CUDA is present and flash-attn really imports (a broken build is common)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        log.warning("flash-attn is installed but does not import (%s); using sdpa", exc)
        return False
    return True


def resolve_attention(cfg: DeviceConfig, device: torch.device) -> str:
    """flash_attention_2 only when flash-attn imports and we run on CUDA; else sdpa."""
    if cfg.attn_implementation == "flash_attention_2" and not (device.type == "cuda" and flash_attn_available()):
        raise ValueError("flash_attention_2 needs the `gpu` extra (flash-attn) and a CUDA device")
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return "flash_attention_2" if device.type == "cuda" and flash_attn_available() else "sdpa"


def describe(device: torch.device, dtype: torch.dtype) -> str:
    return f"{device}/{str(dtype).removeprefix('torch.')}"
