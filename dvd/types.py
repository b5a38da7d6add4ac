"""Plain domain types shared by the services. Protobuf never travels past the edges
(servicers and clients convert with `dvd.convert`); everything inside uses these."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dvd.errors import InvalidRequest


class Codec(enum.Enum):
    """Wire/store encoding of an embedding blob."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8_E4M3 = "fp8"
    INT8 = "int8"


class Compression(enum.Enum):
    """Lossless layer after the codec."""

    NONE = "none"
    ZSTD = "zstd"
    LZ4 = "lz4"


class VirMode(enum.Enum):
    """Visual Resolution Router mode: auto (router decides), off (all 256), max (all 64)."""

    AUTO = "auto"
    OFF = "off"
    MAX = "max"


@dataclass(frozen=True)
class VirOptions:
    """Per-request Visual Resolution Router settings (InternVL3.5-Flash checkpoints).

    `mode` None and unset thresholds take the vision service's defaults. In `auto` a tile takes the
    64-token path when its compress score is above the `relative_threshold` quantile of the scores
    of every tile in the group AND at least `absolute_threshold`. The group is the image's own tiles,
    unless `group_scores` carries the scores of every tile of the whole request (several images or
    video frames, routed first), which is what the published model ranks a tile against.
    """

    mode: VirMode | None = None
    relative_threshold: float | None = None
    absolute_threshold: float | None = None
    group_scores: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("relative_threshold", "absolute_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidRequest(f"vir {name} must be in [0, 1], got {value}")

    def key_text(self) -> str:
        """Everything here that decides the embeddings, as text for content keys."""
        group = ",".join(f"{s!r}" for s in self.group_scores)
        return (f"{self.mode.value if self.mode else ''}|{self.relative_threshold!r}|{self.absolute_threshold!r}"
                f"|{group}")


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class EmbeddingRef:
    """Where one image's projected embeddings are stored and how they are encoded."""

    key: str
    location: str  # "grpc://host:port" or "redis://host:port/db" or "local://" (same process)
    tile_tokens: tuple[int, ...]  # LLM tokens per tile: 256, or 64 for a compressed tile
    codec: Codec
    shape: tuple[int, int]  # [num_tokens, hidden_size]
    num_bytes: int
    checksum: str
    model_id: str
    compression: Compression = Compression.NONE
    fallback_location: str = ""  # grpc:// replica that also holds the blob, when location is Redis
    access_token: str = field(default="", repr=False)  # secret issued with the ref; fetching needs it

    @property
    def num_tokens(self) -> int:
        return sum(self.tile_tokens)


@dataclass(frozen=True)
class TilingOptions:
    """Per-request tiling options; None keeps the vision service's default."""

    min_tiles: int | None = None
    max_tiles: int | None = None
    use_thumbnail: bool | None = None


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature == 0 is greedy. max_tokens None: the service default."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidRequest(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0, got {self.top_k}")
        if len(self.stop) > 16 or any(not s for s in self.stop):
            raise InvalidRequest("stop takes at most 16 non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class StageTimings:
    """Nanoseconds spent per stage; adds up across the stages of one request."""

    queue_ns: int = 0
    encode_ns: int = 0
    transfer_ns: int = 0
    prefill_ns: int = 0
    decode_ns: int = 0

    def add(self, other: StageTimings) -> None:
        self.queue_ns += other.queue_ns
        self.encode_ns += other.encode_ns
        self.transfer_ns += other.transfer_ns
        self.prefill_ns += other.prefill_ns
        self.decode_ns += other.decode_ns


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image in a message, by index into the request's list of images."""

    index: int


@dataclass(frozen=True)
class VideoPart:
    """A video in a message: its sampled frames, by index into the request's list of images."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[TextPart | ImagePart | VideoPart, ...]


@dataclass
class Delta:
    """A piece of a streamed generation. The final one has finish_reason, usage, timings."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: StageTimings | None = None
    cached_images: int = 0  # gateway only: images whose embeddings came from the cache


@dataclass(frozen=True)
class EncodeResult:
    """One image's Encode: where its embeddings are, what it cost, and whether a cache served it."""

    ref: EmbeddingRef
    timings: StageTimings
    cache_hit: bool
    num_tiles: int = 0  # 0 when the answer came from the gateway's ref cache


@dataclass(frozen=True)
class RouteResult:
    """One image's Route (phase one of a multi-image ViR `auto` request): its tiles' scores."""

    scores: tuple[float, ...]  # each tile's router compress score, tiles in order
    timings: StageTimings
    cache_hit: bool = False
