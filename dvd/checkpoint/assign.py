"""Build a service's modules from checkpoint tensors without a second copy of the weights.

Parameters are created on the meta device (no memory, no random init) and the tensors read from
the shards are assigned in place (`load_state_dict(assign=True)`), so peak memory is one copy of
the service's own weights. Buffers, which are computed rather than stored (RoPE inv_freq), are
created for real at construction. Loading is strict: a missing or unexpected tensor raises
CheckpointError listing them, instead of leaving a silently random layer.

Each service owns the builder of its own modules (`vision_service.modules`,
`language_service.model`); this module is the shared mechanism underneath.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.initialization import no_init_weights

from .errors import CheckpointError


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device and skip their init; buffers stay real.

    Unlike `with torch.device("meta")`, this keeps non-persistent buffers such as RoPE's inv_freq,
    which no checkpoint stores and which would otherwise be lost.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        with no_init_weights():
            yield
    finally:
        nn.Module.register_parameter = register


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state` under `prefix`, with the prefix removed."""
    return {key[len(prefix) :]: tensor for key, tensor in state.items() if key.startswith(prefix)}


def assign_state(
    module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, device: str | torch.device, what: str
) -> None:
    """Strictly load `state` into `module` by assignment, cast to `dtype` on `device`."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing tensors {_sample(missing)}, unexpected tensors {_sample(unexpected)}")
    # Cast through a memo so tensors shared by tying (lm_head = embed_tokens) stay one tensor.
    cast: dict[int, torch.Tensor] = {}
    for tensor in state.values():
        if id(tensor) not in cast:
            target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
            cast[id(tensor)] = tensor.to(device=device, dtype=target_dtype)
    module.load_state_dict({key: cast[id(tensor)] for key, tensor in state.items()}, strict=True, assign=True)
    module.to(device)  # the buffers; assigned parameters are already there
    module.requires_grad_(False)
    leftovers = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if leftovers:
        raise CheckpointError(f"{what}: tensors left unloaded: {_sample(leftovers)}")


def _sample(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"
