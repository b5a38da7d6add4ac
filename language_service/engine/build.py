"""One place that turns a `LanguageConfig` into an engine: block geometry, attention backend,
scheduler and runner built to agree with each other."""

from __future__ import annotations

from dvd.config import LanguageConfig
from language_service.engine.block_manager import BlockManager
from language_service.engine.engine import Engine
from language_service.engine.metrics import EngineMetrics
from language_service.engine.runner import PAGED_BACKENDS, ModelRunner
from language_service.engine.scheduler import Scheduler
from language_service.engine.triton_decode import interpreter_on, triton_available

FLASH_BLOCK_SIZE = 256  # flash-attn's paged kernels take blocks in multiples of 256 slots
CPU_BLOCK_SIZE = 16


def attention_backend(attn_implementation: str, decode_attention: str = "auto") -> str:
    """The engine's attention backend for a resolved attn_implementation and the configured
    decode attention (`LanguageConfig.decode_attention`)."""
    if decode_attention == "triton":
        return "triton"
    if decode_attention == "gather" and attn_implementation == "flash_attention_2":
        return "sdpa"
    return {"flash_attention_2": "flash", "eager": "eager"}.get(attn_implementation, "sdpa")


def engine_backend(cfg: LanguageConfig, attn_implementation: str, device) -> str:
    """`attention_backend` checked against the mode and the device (ValueError: cannot run here)."""
    backend = attention_backend(attn_implementation, cfg.decode_attention)
    if cfg.batch_invariant and backend in PAGED_BACKENDS:
        return "sdpa"  # invariance is defined on the per-row SDPA path
    if backend == "triton" and not triton_available():
        raise ValueError("decode_attention 'triton' needs the triton package (it ships with CUDA builds of torch)")
    if backend == "triton" and device.type != "cuda" and not interpreter_on():
        raise ValueError(f"decode_attention 'triton' needs a CUDA device (the model is on {device.type}); "
                         "use 'auto' or 'gather'")
    return backend


def build_engine(cfg: LanguageConfig, model, image_token_id: int, attn_implementation: str, eos_token_ids: set[int],
                 max_model_len: int, metrics: EngineMetrics | None = None) -> Engine:
    backend = engine_backend(cfg, attn_implementation, next(model.parameters()).device)
    block_size = cfg.kv_block_size or (FLASH_BLOCK_SIZE if backend == "flash" else CPU_BLOCK_SIZE)
    # Prefix caching reuses K/V that another forward computed: not the arithmetic batch
    # invariance promises, so that mode recomputes every prefix.
    blocks = BlockManager(cfg.max_kv_tokens // block_size, block_size, cfg.prefix_caching and not cfg.batch_invariant)
    runner = ModelRunner(model, image_token_id, blocks.num_blocks, block_size, backend, cfg.batch_invariant,
                         cfg.cuda_graphs, cfg.max_running_seqs, cfg.fused_layers)
    scheduler = Scheduler(cfg.max_running_seqs, cfg.max_queue, blocks, cfg.max_prefill_tokens,
                          replay_outputs=cfg.batch_invariant)
    return Engine(runner, scheduler, eos_token_ids, max_model_len, metrics)
