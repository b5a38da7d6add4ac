"""One place that turns a `LanguageConfig` into an engine: block geometry, attention backend,
scheduler and runner built to agree with each other."""

from __future__ import annotations

from dvd.config import LanguageConfig
from language_service.engine.block_manager import BlockManager
from language_service.engine.engine import Engine
from language_service.engine.metrics import EngineMetrics
from language_service.engine.runner import ModelRunner
from language_service.engine.scheduler import Scheduler

FLASH_BLOCK_SIZE = 256  # flash-attn's paged kernels take blocks in multiples of 256 slots
CPU_BLOCK_SIZE = 16


def attention_backend(attn_implementation: str) -> str:
    """The engine's attention backend for a resolved attn_implementation."""
    return {"flash_attention_2": "flash", "eager": "eager"}.get(attn_implementation, "sdpa")


def build_engine(cfg: LanguageConfig, model, image_token_id: int, attn_implementation: str, eos_token_ids: set[int],
                 max_model_len: int, metrics: EngineMetrics | None = None) -> Engine:
    backend = attention_backend(attn_implementation)
    if cfg.batch_invariant and backend == "flash":
        backend = "sdpa"  # invariance is defined on the per-row SDPA path
    block_size = cfg.kv_block_size or (FLASH_BLOCK_SIZE if backend == "flash" else CPU_BLOCK_SIZE)
    # Prefix caching reuses K/V that another forward computed: not the arithmetic batch
    # invariance promises, so that mode recomputes every prefix.
    blocks = BlockManager(cfg.max_kv_tokens // block_size, block_size, cfg.prefix_caching and not cfg.batch_invariant)
    runner = ModelRunner(model, image_token_id, blocks.num_blocks, block_size, backend, cfg.batch_invariant,
                         cfg.cuda_graphs, cfg.max_running_seqs, cfg.fused_layers)
    scheduler = Scheduler(cfg.max_running_seqs, cfg.max_queue, blocks, cfg.max_prefill_tokens,
                          replay_outputs=cfg.batch_invariant)
    return Engine(runner, scheduler, eos_token_ids, max_model_len, metrics)
