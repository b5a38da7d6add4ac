"""The request path, top to bottom: check the model -> load images (videos: sampled frames) ->
encode them on the vision pool (route first when the router ranks several images together) ->
generate on the language pool -> stream deltas out. Both front ends (REST and gRPC) parse their
wire format into a `gateway.requests.ChatRequest` and call `Pipeline.chat`; neither knows about
pools or their protobuf.

Faults: a request is admitted only within the gateway's bounds (`Admission`); its deadline is
made here and every pool call gets what is left of it; embeddings a language replica reports
lost (their vision replica died) are encoded again, once, on a live replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from dvd.cache_key import content_key, route_key, tenant_scope
from dvd.config import GatewayConfig
from dvd.deadline import Deadline
from dvd.errors import DeadlineExceeded, EmbeddingLost, ModelNotFound
from dvd.types import Codec, Delta, EncodeResult, Message, StageTimings, VirOptions
from gateway.admission import Admission
from gateway.cache import RefCache
from gateway.images import ImageLoader
from gateway.media import MediaImage, load_media, split_media
from gateway.metrics import GatewayMetrics
from gateway.pools import LanguagePool, PoolInfo, VisionPool
from gateway.requests import ChatRequest
from gateway.video import VideoLoader

log = logging.getLogger(__name__)


class Pipeline:
    """One gateway's request path over a vision pool, a language pool, media loaders and the
    gateway's ref cache. `chat` is the only entry point; `close` releases everything it holds."""

    def __init__(self, cfg: GatewayConfig, vision: VisionPool, language: LanguagePool, images: ImageLoader,
                 cache: RefCache, metrics: GatewayMetrics, videos: VideoLoader | None = None,
                 admission: Admission | None = None) -> None:
        self.cfg = cfg
        self.vision = vision
        self.language = language
        self.images = images
        self.videos = videos or VideoLoader(cfg.max_video_bytes, cfg.video_dir, cfg.default_video_frames,
                                            cfg.max_video_frames, cfg.max_video_frame_pixels)
        self.cache = cache
        self.metrics = metrics
        self.admission = admission or Admission(cfg.max_concurrent_requests, cfg.max_inflight_bytes)

    def chat(self, req: ChatRequest) -> AsyncIterator[Delta]:
        """Stream the reply; the final delta carries finish_reason, usage, timings, cached_images."""
        return self.metrics.track(self._chat(req))

    async def close(self) -> None:
        """Stop the pools' background work and close every connection the pipeline holds."""
        await self.vision.close()
        await self.language.close()
        await self.images.close()
        await self.cache.close()

    async def _chat(self, req: ChatRequest) -> AsyncIterator[Delta]:
        with self.admission.request():
            deadline = Deadline.earliest(self.cfg.request_timeout_s, req.timeout_s)
            self._check_model(req.model)
            messages, sources = split_media(req.messages, self.videos, self.cfg.max_images_per_request,
                                            self.cfg.max_video_frames)
            try:
                async with asyncio.timeout(deadline.remaining_s()):
                    images = await load_media(sources, self.images, self.videos, req.tiling)
            except TimeoutError:
                raise DeadlineExceeded("the request ran out of time loading its images") from None
            with self.admission.hold_bytes(sum(len(image.data) for image in images)):
                async with contextlib.aclosing(self._generate(req, messages, images, deadline)) as deltas:
                    async for delta in deltas:
                        yield delta

    async def _generate(self, req: ChatRequest, messages: list[Message], images: list[MediaImage],
                        deadline: Deadline) -> AsyncIterator[Delta]:
        scope = tenant_scope(req.tenant)
        encoded = await self._encode_all(images, req.vir, req.codec, req.request_id, deadline, scope=scope)
        self.metrics.record_images(sum(e.cache_hit for e in encoded), sum(not e.cache_hit for e in encoded))
        deltas = self.language.generate(req.request_id, messages, [e.ref for e in encoded], req.sampling,
                                        deadline=deadline, scope=scope)
        try:
            first = await anext(deltas)
        except EmbeddingLost as lost:  # their vision replica died or restarted: encode again, once
            self.metrics.embeddings_lost.inc()
            self.cache.forget(e.ref.key for e in encoded)
            log.warning("request %s: %s; encoding its images again", req.request_id, lost.message)
            encoded = await self._encode_all(images, req.vir, req.codec, req.request_id, deadline, use_cache=False,
                                             scope=scope)
            deltas = self.language.generate(req.request_id, messages, [e.ref for e in encoded], req.sampling,
                                            deadline=deadline, scope=scope)
            first = await anext(deltas)
        async with contextlib.aclosing(deltas):
            async for delta in _prepend(first, deltas):
                if delta.finish_reason is not None:
                    _add_vision_stage(delta, encoded)
                yield delta

    def _check_model(self, model: str) -> None:
        if model and model != self.cfg.model_name:
            raise ModelNotFound(f"model {model!r} is not served here; try {self.cfg.model_name!r}")

    async def _encode_all(self, images: list[MediaImage], vir: VirOptions, codec: Codec | None, request_id: str,
                          deadline: Deadline, use_cache: bool = True, scope: str = "") -> list[EncodeResult]:
        """Every image concurrently (video frames fan out across replicas like images). In `auto`
        the router ranks each tile against every tile of the request, so with several images
        their scores are gathered first (`_route_all`) and travel with each Encode."""
        if not images:
            return []
        info = await self.vision.info()
        routing = StageTimings()
        if len(images) > 1 and info.routes(vir.mode):
            vir, routing = await self._route_all(images, vir, info.cache_namespace, request_id, deadline, scope)
        tasks = [self._encode(img, vir, codec, f"{request_id}/{i}", info, deadline, use_cache, scope)
                 for i, img in enumerate(images)]
        encoded = list(await asyncio.gather(*tasks))
        for e in encoded:
            e.timings.add(routing)
        return encoded

    async def _route_all(self, images: list[MediaImage], vir: VirOptions, namespace: str,
                         request_id: str, deadline: Deadline, scope: str = "") -> tuple[VirOptions, StageTimings]:
        """Phase one of a multi-image `auto` request: each image's tile scores, from the replica
        its Encode will go to (route-key affinity), which keeps its ViT output for it."""
        routed = await asyncio.gather(*(
            self.vision.route(img.data, img.tiling, f"{request_id}/{i}",
                              affinity=route_key(img.data, img.tiling, namespace, scope), scope=scope,
                              deadline=deadline)
            for i, img in enumerate(images)))
        slowest = StageTimings(queue_ns=max(r.timings.queue_ns for r in routed),
                               encode_ns=max(r.timings.encode_ns for r in routed))
        return replace(vir, group_scores=tuple(s for r in routed for s in r.scores)), slowest

    async def _encode(self, image: MediaImage, vir: VirOptions, codec: Codec | None, request_id: str,
                      info: PoolInfo, deadline: Deadline, use_cache: bool, scope: str = "") -> EncodeResult:
        """A cache hit skips the vision pool; a miss goes to the replica that owns the key
        (without a shared Redis, that replica's memory is the cache), a routed image to the
        replica that holds its ViT output."""
        key = content_key(image.data, image.tiling, vir, codec, info.cache_namespace, info.default_codec, scope)
        ref = await self.cache.get(key) if use_cache else None
        if ref is not None:
            return EncodeResult(ref, StageTimings(), cache_hit=True)
        if vir.group_scores:
            affinity = route_key(image.data, image.tiling, info.cache_namespace, scope)
        else:
            affinity = "" if self.cache.shared else key
        encoded = await self.vision.encode(image.data, image.tiling, vir, codec, request_id, affinity=affinity,
                                           scope=scope, deadline=deadline)
        self.cache.remember(key, encoded.ref)
        return encoded


async def _prepend(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    yield first
    async for delta in rest:
        yield delta


def _add_vision_stage(delta: Delta, encoded: list[EncodeResult]) -> None:
    """Fold the vision stage into the final delta's timings. Images are encoded concurrently,
    so the stage takes as long as its slowest image; cache hits cost the vision pool nothing."""
    vision = StageTimings(queue_ns=max((e.timings.queue_ns for e in encoded), default=0),
                          encode_ns=max((e.timings.encode_ns for e in encoded), default=0))
    if delta.timings is None:
        delta.timings = StageTimings()
    delta.timings.add(vision)
    delta.cached_images = sum(e.cache_hit for e in encoded)
