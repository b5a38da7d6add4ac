"""`python -m language_service --model DIR`: one language replica (the LLM decoder)."""

from __future__ import annotations

import argparse
import asyncio

from dvd.config import LanguageConfig
from dvd.flags import (
    add_client_tls,
    add_common,
    add_decode_attention,
    add_redis,
    client_tls,
    device_config,
    read_secret,
    server_tls,
    setup_logging,
)
from language_service.server import serve


def parse_config(argv: list[str] | None = None) -> LanguageConfig:
    p = argparse.ArgumentParser(prog="python -m language_service", description=__doc__)
    add_common(p, default_port=50052)
    p.add_argument("--attn-implementation", default="auto", help="auto | sdpa | flash_attention_2 | eager")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.add_argument("--max-running-seqs", type=int, default=16, help="sequences decoding at once")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests; beyond it: RESOURCE_EXHAUSTED")
    p.add_argument("--max-kv-tokens", type=int, default=65536, help="KV-cache budget in tokens (allocated at load)")
    p.add_argument("--max-prefill-tokens", type=int, default=2048, help="prompt tokens per step (chunked prefill)")
    p.add_argument("--kv-block-size", type=int, default=0, help="token slots per KV block (0: 256 with flash-attn, "
                   "else 16)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="bit-exact outputs whatever else is batched (slower; see README)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on a GPU")
    add_decode_attention(p)
    p.add_argument("--no-fused-layers", action="store_true",
                   help="batched forwards through transformers' stock decoder layers (default: the fused layer)")
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="prefill every prompt in full (default: reuse the KV blocks of cached prefixes)")
    p.add_argument("--metrics-port", type=int, default=9092, help="Prometheus /metrics port (0: pick a free one)")
    p.add_argument("--fetch-timeout-s", type=float, default=30.0)
    p.add_argument("--chat-template", default="checkpoint",
                   help="checkpoint (the checkpoint's own: config.json `template` in the original layout, "
                        "chat_template when HF-native) | internvl2_5 | PATH.jinja")
    add_client_tls(p, "fetch-tls", "the vision replicas (FetchEmbedding)")
    add_redis(p, "the shared embedding cache refs may name (its password and TLS files)")
    a = p.parse_args(argv)
    setup_logging(a.log_level)
    return LanguageConfig(
        model=a.model, host=a.host, port=a.port, device=device_config(a), max_model_len=a.max_model_len,
        default_max_tokens=a.default_max_tokens, max_running_seqs=a.max_running_seqs, max_queue=a.max_queue,
        max_kv_tokens=a.max_kv_tokens, max_prefill_tokens=a.max_prefill_tokens, metrics_port=a.metrics_port,
        fetch_timeout_s=a.fetch_timeout_s, drain_grace_s=a.drain_grace_s, chat_template=a.chat_template,
        tls=server_tls(a),
        health_port=a.health_port, fetch_tls=client_tls(a, "fetch-tls"), redis_url=a.redis,
        redis_tls=client_tls(a, "redis-tls"), redis_password=read_secret(a.redis_password_file),
        kv_block_size=a.kv_block_size, batch_invariant=a.batch_invariant, cuda_graphs=not a.no_cuda_graphs,
        fused_layers=not a.no_fused_layers, prefix_caching=not a.no_prefix_caching,
        decode_attention=a.decode_attention,
    )


if __name__ == "__main__":
    asyncio.run(serve(parse_config()))
