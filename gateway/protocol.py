"""OpenAI chat-completions wire models (the subset dvd-serve serves, plus extensions: `vir` and
`vir_thresholds` (InternVL3.5-Flash router), the tiling limits, `ignore_eos`, and `video_url`
content parts) and their conversion to the pipeline's `ChatRequest`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dvd.errors import InvalidRequest
from dvd.types import Codec, SamplingParams, TextPart, TilingOptions, VirMode, VirOptions
from gateway.images import ImageSource
from gateway.requests import ChatRequest, ChatTurn
from gateway.video import VideoSource

UINT32_MAX = 2**32 - 1  # the protobuf field widths the values travel in
UINT64_MAX = 2**64 - 1


class ImageURL(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextContent(BaseModel):
    type: Literal["text"]
    text: str


class ImageContent(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(BaseModel):
    url: str  # data:video/...;base64,... or file:///abs/path (only under the gateway's --video-dir)


class VideoContent(BaseModel):
    """A video; `num_frames` frames are sampled uniformly (default: the gateway's, 8)."""

    type: Literal["video_url"]
    video_url: VideoURL
    num_frames: int | None = Field(default=None, ge=1, le=UINT32_MAX)


Content = Annotated[TextContent | ImageContent | VideoContent, Field(discriminator="type")]


class VirThresholds(BaseModel):
    """Auto-mode router thresholds; unset ones keep the vision service's."""

    relative: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    absolute: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[Content] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Unknown fields are ignored, as OpenAI does; OpenAI fields this
    server does not implement (tools, audio, penalties, ...) are declared so that a request using
    them gets a 400 naming the field instead of being silently served without it. Every range
    is checked here, before anything reaches protobuf (uint32 / uint64 fields)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    seed: int | None = Field(default=None, ge=0, le=UINT64_MAX)
    stop: str | list[str] | None = Field(default=None, max_length=16)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # dvd-serve extensions
    vir: Literal["auto", "off", "max"] | None = None
    vir_thresholds: VirThresholds | None = None
    codec: Literal["fp32", "bf16", "fp16", "fp8", "int8"] | None = None  # image embeddings on the wire
    min_tiles: int | None = Field(default=None, ge=1, le=40)
    max_tiles: int | None = Field(default=None, ge=1, le=40)
    ignore_eos: bool = False  # as in vLLM: keep generating past EOS (benchmarks with fixed output lengths)
    # OpenAI fields not implemented here: any value but "unset" (or a neutral one) is a 400.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    modalities: list[str] | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("tools", "tool_choice", "functions", "function_call", "audio", "prediction",
                     "web_search_options", "modalities", "logit_bias", "presence_penalty", "frequency_penalty")
    @classmethod
    def _not_implemented(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (None, 0, {}, [], ["text"]):  # unset, or a value that changes nothing
            raise ValueError(f"`{info.field_name}` is not supported by this server")
        return value

    def to_chat_request(self, request_id: str, tenant: str = "") -> ChatRequest:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        sampling = SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0, seed=self.seed, stop=stop, ignore_eos=self.ignore_eos,
        )
        return ChatRequest(
            messages=tuple(_turn(m) for m in self.messages), sampling=sampling, model=self.model,
            tiling=TilingOptions(min_tiles=self.min_tiles, max_tiles=self.max_tiles),
            vir=self._vir(), codec=Codec(self.codec) if self.codec else None, request_id=request_id,
            tenant=tenant,
        )

    def _vir(self) -> VirOptions:
        thresholds = self.vir_thresholds or VirThresholds()
        return VirOptions(VirMode(self.vir) if self.vir else None, thresholds.relative, thresholds.absolute)


def _turn(m: ChatMessageIn) -> ChatTurn:
    if m.content is None or isinstance(m.content, str):
        return ChatTurn(m.role, (TextPart(m.content or ""),))
    parts = []
    for c in m.content:
        if isinstance(c, TextContent):
            parts.append(TextPart(c.text))
            continue
        if m.role != "user":
            raise InvalidRequest("only user messages may contain images or videos")
        if isinstance(c, VideoContent):
            parts.append(VideoSource(url=c.video_url.url, num_frames=c.num_frames))
        else:
            parts.append(ImageSource(url=c.image_url.url))
    return ChatTurn(m.role, tuple(parts))


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error JSON every 4xx/5xx answer carries."""

    error: ErrorDetail


def _error_doc(what: str) -> dict:
    return {"model": ErrorResponse, "description": what}


# What the chat route documents in the OpenAPI schema (and the fuzz tests hold it to).
ERROR_RESPONSES = {
    400: _error_doc("invalid request: malformed body, out-of-range value, unsupported field, bad image"),
    401: _error_doc("missing or invalid API key"),
    404: _error_doc("unknown model"),
    413: _error_doc("request body larger than the gateway's limit"),
    429: _error_doc("overloaded: retry later"),
    503: _error_doc("no replica available"),
}


def error_body(message: str, type_: str, code: int | str | None = None, param: str | None = None) -> dict:
    """The OpenAI error JSON."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
