"""The gateway's request types: what both front ends (REST and gRPC) turn a client request into.

A request id is made once, at the edge that received the request (`dvd.identity.new_request_id`
unless the client sent its own), and travels unchanged to the vision and language pools."""

from __future__ import annotations

from dataclasses import dataclass, field

from dvd.types import Codec, SamplingParams, TextPart, TilingOptions, VirOptions
from gateway.images import ImageSource
from gateway.video import VideoSource


@dataclass(frozen=True)
class ChatTurn:
    """One message of the conversation: a role and its parts, media still unloaded."""

    role: str
    parts: tuple[TextPart | ImageSource | VideoSource, ...]


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion as the pipeline runs it; `request_id` is required (made at the edge)."""

    messages: tuple[ChatTurn, ...]
    request_id: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    model: str = ""  # "" = the served model; anything else must name it
    tiling: TilingOptions = field(default_factory=TilingOptions)  # images; video frames are one tile each
    vir: VirOptions = field(default_factory=VirOptions)
    codec: Codec | None = None  # None: the vision pool's default
    tenant: str = ""  # who asked (gateway.auth): cached embeddings are never shared across tenants

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("ChatRequest needs the request id made at the edge")
