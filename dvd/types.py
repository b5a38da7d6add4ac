"""Plain domain types shared by the services. Protobuf never travels past the edges
(servicers and clients convert with `dvd.convert`); everything inside uses these."""

from __future__ import annotations

import enum
import hashlib
import json
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


MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs


class GuideKind(enum.Enum):
    """What a guided (constrained) generation must produce."""

    JSON_OBJECT = "json_object"  # any JSON object
    JSON_SCHEMA = "json_schema"  # JSON valid against `schema`
    REGEX = "regex"  # text the regular expression matches in full
    CHOICE = "choice"  # exactly one of `choices`


@dataclass(frozen=True)
class GuidedDecoding:
    """A grammar the output must follow (OpenAI `response_format`, vLLM `guided_choice` /
    `guided_regex`). `schema` is the JSON text of a JSON Schema; `strict` as in OpenAI's
    json_schema (no properties or items beyond the schema's)."""

    kind: GuideKind
    schema: str = ""
    strict: bool = True
    regex: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind is GuideKind.JSON_SCHEMA:
            try:
                parsed = json.loads(self.schema)
            except ValueError as exc:
                raise InvalidRequest(f"json_schema.schema is not valid JSON: {exc}", param="response_format") from exc
            if not isinstance(parsed, dict):
                raise InvalidRequest("json_schema.schema must be a JSON object", param="response_format")
        if self.kind is GuideKind.REGEX and not self.regex:
            raise InvalidRequest("guided_regex must not be empty", param="guided_regex")
        if self.kind is GuideKind.CHOICE and (not self.choices or any(not c for c in self.choices)):
            raise InvalidRequest("guided_choice takes a non-empty list of non-empty strings", param="guided_choice")

    def cache_key(self) -> str:
        """Hash of everything that decides the grammar: equal keys compile to the same grammar."""
        text = json.dumps([self.kind.value, self.schema, self.strict, self.regex, list(self.choices)])
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature == 0 is greedy. max_tokens None: the service default.
    `guided` constrains the output to a grammar; `logprobs` reports each token's log
    probability and, with `top_logprobs` k, the k most likely alternatives."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    guided: GuidedDecoding | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}",
                                 param="top_logprobs")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
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
    cached_tokens: int = 0  # of prompt_tokens: taken from the language replica's prefix cache, not prefilled


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


@dataclass(frozen=True)
class Logprob:
    """One token and its log probability; `token_bytes` are its UTF-8 bytes (a token can hold
    part of a character, then `token` shows U+FFFD where the bytes do not decode)."""

    token_id: int
    token: str
    token_bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """The sampled token's log probability and the `top_logprobs` most likely tokens at its position."""

    chosen: Logprob
    top: tuple[Logprob, ...] = ()


@dataclass
class Delta:
    """A piece of a streamed generation. The final one has finish_reason, usage, timings.
    `logprobs`, when requested, has one entry per token id, in order."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
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
