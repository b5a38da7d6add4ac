"""The request path, top to bottom: parse -> load images -> encode them on the vision pool
-> generate on the language pool -> stream deltas out. Both front ends (REST and gRPC) call
`Pipeline.chat`; neither knows about pools or protobuf of the pools."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from dvd.cache_key import content_key
from dvd.config import GatewayConfig
from dvd.errors import InvalidRequest, ModelNotFound, NotFound
from dvd.types import Delta, ImagePart, Message, SamplingParams, StageTimings, TextPart, TilingOverrides, VirMode
from gateway.cache import RefCache
from gateway.images import ImageLoader, ImageSource
from gateway.metrics import GatewayMetrics
from gateway.pools import Encoded, LanguagePool, VisionPool


@dataclass(frozen=True)
class ChatTurn:
    role: str
    parts: tuple[TextPart | ImageSource, ...]


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatTurn, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    model: str = ""
    tiling: TilingOverrides = field(default_factory=TilingOverrides)
    vir: VirMode | None = None
    request_id: str = ""


class Pipeline:
    def __init__(self, cfg: GatewayConfig, vision: VisionPool, language: LanguagePool, images: ImageLoader,
                 cache: RefCache, metrics: GatewayMetrics) -> None:
        self.cfg = cfg
        self.vision = vision
        self.language = language
        self.images = images
        self.cache = cache
        self.metrics = metrics

    def chat(self, req: ChatRequest) -> AsyncIterator[Delta]:
        """Stream the reply; the final delta carries finish_reason, usage, timings, cached_images."""
        return self.metrics.track(self._chat(req))

    async def _chat(self, req: ChatRequest) -> AsyncIterator[Delta]:
        request_id = req.request_id or f"chatcmpl-{uuid.uuid4().hex}"
        self.check_model(req.model)
        messages, sources = _split_images(req.messages, self.cfg.max_images_per_request)
        images = await self.images.load_all(sources)
        encoded = await self._encode_all(images, req, request_id)
        self.metrics.record_images(sum(e.cache_hit for e in encoded), sum(not e.cache_hit for e in encoded))
        deltas = self.language.generate(request_id, messages, [e.ref for e in encoded], req.sampling)
        try:
            first = await anext(deltas)
        except NotFound:  # a store evicted the embeddings between encode and fetch: encode again, once
            encoded = await self._encode_all(images, req, request_id, use_cache=False)
            deltas = self.language.generate(request_id, messages, [e.ref for e in encoded], req.sampling)
            first = await anext(deltas)
        async for delta in _prepend(first, deltas):
            if delta.finish_reason is not None:
                _add_vision_stage(delta, encoded)
            yield delta

    def check_model(self, model: str) -> None:
        if model and model != self.cfg.model_name:
            raise ModelNotFound(f"model {model!r} is not served here; try {self.cfg.model_name!r}")

    async def _encode_all(self, images: list[bytes], req: ChatRequest, request_id: str,
                          use_cache: bool = True) -> list[Encoded]:
        namespace = await self.vision.namespace() if images else ""
        tasks = [self._encode(img, req, f"{request_id}/{i}", namespace, use_cache) for i, img in enumerate(images)]
        return list(await asyncio.gather(*tasks))

    async def _encode(self, image: bytes, req: ChatRequest, request_id: str, namespace: str,
                      use_cache: bool) -> Encoded:
        """A cache hit skips the vision pool; a miss goes to the replica that owns the key
        (without a shared Redis, that replica's memory is the cache)."""
        key = content_key(image, req.tiling, req.vir, None, namespace)
        ref = await self.cache.get(key) if use_cache else None
        if ref is not None:
            return Encoded(ref, StageTimings(), cache_hit=True)
        affinity = "" if self.cache.redis is not None else key
        encoded = await self.vision.encode(image, req.tiling, req.vir, None, request_id, affinity=affinity)
        self.cache.remember(key, encoded.ref)
        return encoded


async def _prepend(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    yield first
    async for delta in rest:
        yield delta


def _split_images(turns: tuple[ChatTurn, ...], max_images: int) -> tuple[list[Message], list[ImageSource]]:
    """Replace each image in the conversation by an index into the returned source list."""
    messages, sources = [], []
    for turn in turns:
        parts: list[TextPart | ImagePart] = []
        for part in turn.parts:
            if isinstance(part, ImageSource):
                parts.append(ImagePart(len(sources)))
                sources.append(part)
            else:
                parts.append(part)
        messages.append(Message(turn.role, tuple(parts)))
    if len(sources) > max_images:
        raise InvalidRequest(f"{len(sources)} images in one request; the limit is {max_images}")
    return messages, sources


def _add_vision_stage(delta: Delta, encoded: list[Encoded]) -> None:
    """Fold the vision stage into the final delta's timings. Images are encoded concurrently,
    so the stage takes as long as its slowest image; cache hits cost the vision pool nothing."""
    vision = StageTimings(queue_ns=max((e.timings.queue_ns for e in encoded), default=0),
                          encode_ns=max((e.timings.encode_ns for e in encoded), default=0))
    if delta.timings is None:
        delta.timings = StageTimings()
    delta.timings.add(vision)
    delta.cached_images = sum(e.cache_hit for e in encoded)
