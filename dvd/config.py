"""One frozen config dataclass per service, validated in __post_init__. Built once from
flags in each service's `__main__` (or by `dvd serve`); nothing else reads argv or env."""

from __future__ import annotations

from dataclasses import dataclass, field

from dvd.tls import TlsFiles
from dvd.types import Codec, Compression, VirMode

DEFAULT_MODEL = "tiny"  # `dvd serve` with no --model: the tiny random-init checkpoint


def _positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


RESIZE_ON_DEVICE = ("auto", "on", "off")  # VisionConfig.resize_on_device


@dataclass(frozen=True)
class DeviceConfig:
    """device: "auto" | "cpu" | "cuda" | "cuda:N"; dtype: "auto" | "float32" | "bfloat16" | "float16".
    attn_implementation: "auto" | "sdpa" | "flash_attention_2" | "eager"."""

    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if self.attn_implementation not in ("auto", "sdpa", "flash_attention_2", "eager"):
            raise ValueError(f"unknown attn_implementation {self.attn_implementation!r}")


@dataclass(frozen=True)
class VisionConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 50051
    advertise: str = ""  # host:port language replicas use to fetch; default host:bound port
    device: DeviceConfig = field(default_factory=DeviceConfig)
    codec: Codec | None = None  # None: match the compute dtype (fp32 on CPU, bf16 on GPU)
    compression: Compression = Compression.NONE
    # Router (InternVL3.5-Flash checkpoints). vir None: auto when the checkpoint's config sets
    # flash_mode, else off; thresholds None: the checkpoint's flash_*_threshold.
    vir: VirMode | None = None
    vir_relative_threshold: float | None = None
    vir_absolute_threshold: float | None = None
    route_cache_bytes: int = 256 * 1024 * 1024  # ViT grids kept between Route and Encode
    route_grid_ttl_s: float = 60.0
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 64 * 1024 * 1024
    max_batch_tiles: int = 0  # tiles per ViT forward; 0: by device (vision_service.core.AUTO_BATCH_TILES)
    preprocess_workers: int = 0  # decode/resize/tile threads; 0: one per CPU the replica may use
    fast_decode: bool = False  # decode JPEGs >= 2x the canvas at reduced size (changes pixels)
    # Resize and tile on the ViT's device (same bytes; vision_service.device_tiling): "auto" does
    # on CUDA, where it frees the CPU, not on a CPU device, where Pillow's C is faster.
    resize_on_device: str = "auto"
    max_batch_wait_ms: float = 5.0
    max_queue_images: int = 256
    store_max_bytes: int = 2 * 1024**3
    store_ttl_s: float = 600.0
    fetch_chunk_bytes: int = 1024 * 1024
    metrics_port: int = 9090  # Prometheus /metrics over HTTP; 0 picks a free port
    redis_url: str = field(default="", repr=False)  # also write embeddings to this Redis; "" = memory only
    redis_chunk_bytes: int = 8 * 1024 * 1024
    linger_s: float = 5.0  # after SIGTERM: NOT_SERVING but still serving fetches, before draining
    drain_grace_s: float = 30.0
    tls: TlsFiles = field(default_factory=TlsFiles)  # server TLS; a client CA makes it mTLS
    health_port: int = 0  # plaintext gRPC health alone (Kubernetes probes); 0: none
    redis_tls: TlsFiles = field(default_factory=TlsFiles)  # rediss:// CA and client certificate
    redis_password: str = field(default="", repr=False)  # Redis AUTH; never in refs or logs
    # Tiles waiting for the ViT (what memory and latency scale with; an image is 1-40 tiles).
    # Beyond it: RESOURCE_EXHAUSTED. One image larger than the bound is admitted into an empty queue.
    max_queue_tiles: int = 1024

    def __post_init__(self) -> None:
        _positive(max_queue_tiles=self.max_queue_tiles)
        _positive(redis_chunk_bytes=self.redis_chunk_bytes, max_queue_images=self.max_queue_images,
                  store_max_bytes=self.store_max_bytes, store_ttl_s=self.store_ttl_s,
                  fetch_chunk_bytes=self.fetch_chunk_bytes, max_image_bytes=self.max_image_bytes)
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {self.min_tiles}, {self.max_tiles}")
        if self.max_batch_wait_ms < 0 or self.max_batch_tiles < 0 or self.preprocess_workers < 0:
            raise ValueError("max_batch_wait_ms, max_batch_tiles and preprocess_workers must be >= 0")
        for name in ("vir_relative_threshold", "vir_absolute_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        _positive(route_grid_ttl_s=self.route_grid_ttl_s)
        if self.resize_on_device not in RESIZE_ON_DEVICE:
            raise ValueError(f"resize_on_device must be one of {RESIZE_ON_DEVICE}, got {self.resize_on_device!r}")


DECODE_ATTENTION = ("auto", "gather", "triton")


@dataclass(frozen=True)
class LanguageConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 50052
    device: DeviceConfig = field(default_factory=DeviceConfig)
    max_model_len: int = 8192  # prompt + completion tokens; capped by the model's positions
    default_max_tokens: int = 256
    max_running_seqs: int = 16  # sequences decoding (or prefilling) at once
    max_queue: int = 256  # requests waiting for admission; beyond it: RESOURCE_EXHAUSTED
    max_kv_tokens: int = 65536  # KV-cache budget in token positions, allocated once at load
    max_prefill_tokens: int = 2048  # prompt tokens per engine step (and per chunk)
    kv_block_size: int = 0  # token slots per KV block; 0: 256 with flash-attn (its paged minimum), else 16
    # Bit-exact batch invariance (solo == batched logits) at a throughput cost; default: the fast path
    batch_invariant: bool = False
    cuda_graphs: bool = True  # decode under CUDA graphs on a GPU (ignored on CPU)
    fused_layers: bool = True  # fast path: batched forwards through the fused decoder layer (engine/fused.py)
    # Decode attention on a GPU: "auto" (flash-attn's paged kernel when installed, else "gather"),
    # "gather" (each row's keys gathered, then SDPA), "triton" (paged Triton kernel, CUDA only)
    decode_attention: str = "auto"
    # Share the KV blocks of common prefixes (same tenant scope, tokens and images); off when batch-invariant
    prefix_caching: bool = True
    metrics_port: int = 9092  # Prometheus /metrics over HTTP; 0 picks a free port
    fetch_timeout_s: float = 30.0
    drain_grace_s: float = 30.0
    # The prompt template: "checkpoint" (an original-layout checkpoint's config.json `template`, an
    # HF-native one's chat_template), a conversation template name ("internvl2_5"), or a .jinja path.
    chat_template: str = "checkpoint"
    tls: TlsFiles = field(default_factory=TlsFiles)  # server TLS; a client CA makes it mTLS
    health_port: int = 0  # plaintext gRPC health alone (Kubernetes probes); 0: none
    fetch_tls: TlsFiles = field(default_factory=TlsFiles)  # client TLS to vision replicas (FetchEmbedding)
    redis_url: str = field(default="", repr=False)  # the shared Redis refs may name (password, TLS below)
    redis_tls: TlsFiles = field(default_factory=TlsFiles)
    redis_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.chat_template:
            raise ValueError("chat_template must name a template ('checkpoint', 'internvl2_5' or a .jinja path)")
        _positive(max_model_len=self.max_model_len, default_max_tokens=self.default_max_tokens,
                  max_running_seqs=self.max_running_seqs, max_queue=self.max_queue,
                  max_kv_tokens=self.max_kv_tokens, max_prefill_tokens=self.max_prefill_tokens,
                  fetch_timeout_s=self.fetch_timeout_s)
        if self.kv_block_size < 0:
            raise ValueError(f"kv_block_size must be >= 0, got {self.kv_block_size}")
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION}, got {self.decode_attention!r}")
        if self.max_kv_tokens < self.max_model_len:
            raise ValueError(f"max_kv_tokens ({self.max_kv_tokens}) must hold one full-length sequence "
                             f"(max_model_len {self.max_model_len})")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")


@dataclass(frozen=True)
class GatewayConfig:
    vision_targets: tuple[str, ...]  # host:port of each vision replica
    language_targets: tuple[str, ...]  # host:port of each language replica
    model_name: str = "internvl"  # the id clients pass as `model`
    model_root: str = ""  # checkpoint path or hub id, shown in /v1/models
    host: str = "127.0.0.1"
    port: int = 8000  # REST
    grpc_port: int = 50050
    max_image_bytes: int = 20 * 1024 * 1024
    max_images_per_request: int = 16
    image_fetch_timeout_s: float = 10.0
    allow_http_images: bool = True
    # Video: frames sampled per video unless the request says, and the most frames per request.
    video_dir: str = ""  # file:// video URLs are read only under this directory; "" refuses them
    max_video_bytes: int = 256 * 1024 * 1024
    default_video_frames: int = 8
    max_video_frames: int = 64
    max_video_frame_pixels: int = 4096 * 4096
    request_timeout_s: float = 600.0
    redis_url: str = field(default="", repr=False)  # shared embedding cache; "" = route identical images to one replica instead
    ref_cache_ttl_s: float = 300.0  # keep below the vision store's TTL
    ref_cache_max_entries: int = 100_000
    drain_grace_s: float = 30.0
    # Bad input and security (RELIABILITY.md, "Bad input and security").
    allow_private_urls: bool = False  # image/video URLs may resolve to loopback/private addresses
    allow_url_hosts: tuple[str, ...] = ()  # hosts (".suffix": a domain) exempt from the address check
    only_allowed_url_hosts: bool = False  # fetch nothing but allow_url_hosts
    max_url_redirects: int = 3
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (key, tenant); () = no auth
    auth_health: bool = False  # /health needs a key too
    auth_metrics: bool = False  # /metrics needs a key too
    tenant_header: str = ""  # trusted header (set by an auth proxy) naming the tenant; "" = keys only
    max_body_bytes: int = 128 * 1024 * 1024  # REST request body; beyond it: 413
    max_grpc_message_bytes: int = 64 * 1024 * 1024  # public gRPC port (the pools' hops keep their own)
    tls: TlsFiles = field(default_factory=TlsFiles)  # public gRPC (and REST) server TLS; client CA: mTLS
    health_port: int = 0  # plaintext gRPC health alone (Kubernetes probes); 0: none
    pool_tls: TlsFiles = field(default_factory=TlsFiles)  # client TLS to the vision and language pools
    redis_tls: TlsFiles = field(default_factory=TlsFiles)
    redis_password: str = field(default="", repr=False)
    # Overload: requests in flight and media bytes they hold; past either, a fast 429 (0: no bound).
    max_concurrent_requests: int = 256
    max_inflight_bytes: int = 1024 * 1024 * 1024
    replica_wait_s: float = 15.0  # a call that finds no live replica waits this long for one (then 503)

    def __post_init__(self) -> None:
        if self.max_concurrent_requests < 0 or self.max_inflight_bytes < 0 or self.replica_wait_s < 0:
            raise ValueError("max_concurrent_requests, max_inflight_bytes and replica_wait_s must be >= 0")
        if not self.vision_targets or not self.language_targets:
            raise ValueError("the gateway needs at least one vision and one language target")
        _positive(max_image_bytes=self.max_image_bytes, max_images_per_request=self.max_images_per_request,
                  image_fetch_timeout_s=self.image_fetch_timeout_s, request_timeout_s=self.request_timeout_s,
                  max_video_bytes=self.max_video_bytes, default_video_frames=self.default_video_frames,
                  max_video_frame_pixels=self.max_video_frame_pixels, ref_cache_ttl_s=self.ref_cache_ttl_s,
                  ref_cache_max_entries=self.ref_cache_max_entries)
        _positive(max_body_bytes=self.max_body_bytes, max_grpc_message_bytes=self.max_grpc_message_bytes)
        if self.max_url_redirects < 0:
            raise ValueError(f"max_url_redirects must be >= 0, got {self.max_url_redirects}")
        if any(not key for key, _ in self.api_keys):
            raise ValueError("API keys must be non-empty")
        if not self.default_video_frames <= self.max_video_frames:
            raise ValueError(f"default_video_frames ({self.default_video_frames}) exceeds max_video_frames "
                             f"({self.max_video_frames})")
