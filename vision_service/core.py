"""The vision service's logic, free of protobuf: bytes -> tiles -> batched ViT -> (router) ->
projector(s) -> codec -> store, and serving stored blobs back in chunks. `route` is the first
phase of a multi-image `auto` request: ViT + router scores, the ViT grid kept for `encode`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from dvd import codec as codecs
from dvd.cache_key import cache_namespace, content_key, route_key
from dvd.checkpoint import checkpoint_layout
from dvd.config import VisionConfig
from dvd.devices import describe, resolve_device, resolve_dtype
from dvd.errors import InvalidRequest, ModelNotFound, NotFound, Unavailable
from dvd.identity import model_identity
from dvd.redis_store import RedisStore, StoreUnavailable
from dvd.store import MemoryStore
from dvd.types import Codec, EmbeddingRef, EncodeResult, RouteResult, StageTimings, TilingOptions, VirOptions
from vision_service.batcher import TileBatcher
from vision_service.device_tiling import device_tiler
from vision_service.encoder import TileEncoder, TileFeatures, VirPlan
from vision_service.metrics import VisionMetrics
from vision_service.preprocess import ImageDecodeError, ImageTiles, ResolvedTiling, preprocess_pixels
from vision_service.preprocess_pool import PreprocessPool, default_workers
from vision_service.route_cache import RouteCache
from vision_service.routing import RouterPolicy
from vision_service.tiling_card import NAME as CARD_TILING
from vision_service.tiling_card import preprocess_pixels_card

log = logging.getLogger(__name__)

_CODEC_FOR_DTYPE = {"torch.float32": Codec.FP32, "torch.bfloat16": Codec.BF16, "torch.float16": Codec.FP16}

# Tiles per ViT forward when the config leaves it to the device. On a CPU a wider forward costs
# more per tile, not less (its activations leave the caches: `dvd bench vit`, small preset, one
# thread: 10 tiles in forwards of 1-5 take 872-888 ms, in one forward 1022 ms; BENCHMARKS.md), and
# every image in a batch waits for the whole batch, so a CPU replica runs images nearly alone. A
# GPU (and any other accelerator) needs the width to fill its SMs.
GPU_BATCH_TILES = 32
AUTO_BATCH_TILES = {"cpu": 2, "cuda": GPU_BATCH_TILES}


class VisionCore:
    """Owns the encoder, the batcher and the embedding store of one vision replica."""

    def __init__(self, cfg: VisionConfig, checkpoint_dir: Path, location: str,
                 metrics: VisionMetrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or VisionMetrics(CollectorRegistry())
        self.checkpoint_dir = checkpoint_dir
        self.location = location  # what EmbeddingRef.location says: where to fetch from
        self.model_id = model_identity(checkpoint_dir)
        self.store = MemoryStore(cfg.store_max_bytes, cfg.store_ttl_s)
        self.metrics.store_bytes.set_function(self.store.live_bytes)  # read at scrape: expiry shows too
        self.encoder: TileEncoder | None = None
        self.router: RouterPolicy | None = None
        self.batcher: TileBatcher | None = None
        self.preprocess_pool: PreprocessPool | None = None
        self.max_batch_tiles = cfg.max_batch_tiles
        self.routes = RouteCache(cfg.route_cache_bytes, cfg.route_grid_ttl_s, cfg.store_ttl_s)
        self.default_codec: Codec = cfg.codec or Codec.FP32
        self.cache_namespace = ""
        # The layout decides the preprocessing: original = the model cards', HF-native = transformers'.
        original = checkpoint_layout(checkpoint_dir).original
        self.preprocessing = CARD_TILING if original else "hf-processor"
        self._preprocess_fn = preprocess_pixels_card if original else preprocess_pixels
        self.redis = RedisStore(cfg.redis_url, cfg.store_ttl_s, cfg.redis_chunk_bytes, tls=cfg.redis_tls,
                                password=cfg.redis_password) if cfg.redis_url else None
        self._encoding: dict[str, asyncio.Task[EncodeResult]] = {}  # content key -> its encode in flight
        self._waiters: dict[str, int] = {}  # content key -> callers waiting for that encode

    def load(self) -> None:
        """Blocking: read the vision tensors, warm up. Call before `start()`."""
        device = resolve_device(self.cfg.device)
        dtype = resolve_dtype(self.cfg.device, device)
        self.encoder = TileEncoder(str(self.checkpoint_dir), device, dtype)
        self.max_batch_tiles = self.cfg.max_batch_tiles or AUTO_BATCH_TILES.get(device.type, GPU_BATCH_TILES)
        self.encoder.warmup()
        self.preprocess_pool = PreprocessPool(self._preprocess_fn, self.cfg.preprocess_workers or default_workers(),
                                              self.cfg.max_image_pixels, self.cfg.fast_decode,
                                              pin_memory=device.type == "cuda", tiler=device_tiler(self.cfg.resize_on_device, device))
        self.router = RouterPolicy(self.cfg, self.encoder)
        # Ship features in the compute dtype unless told otherwise: lossless, and what DvD does.
        self.default_codec = self.cfg.codec or _CODEC_FOR_DTYPE[str(dtype)]
        # The model id already differs per checkpoint (so per layout); the preprocessing name also
        # keeps apart the entries of replicas that preprocess the same checkpoint differently
        # (a shared Redis during an upgrade across a preprocessing change). Reduced-size JPEG
        # decoding changes the pixels, so it is part of that name.
        decoding = "|fast-decode" if self.cfg.fast_decode else ""
        self.cache_namespace = cache_namespace(f"{self.model_id}|{self.preprocessing}{decoding}", self.default_codec,
                                               self.cfg.compression, self.cfg.min_tiles, self.cfg.max_tiles,
                                               self.cfg.use_thumbnail, self.router.key_text())
        log.info("vision model %s loaded on %s, %d torch threads; %s preprocessing in %d workers%s, resizing on "
                 "the %s, normalisation by %s", self.model_id, describe(device, dtype), torch.get_num_threads(),
                 self.preprocessing, self.preprocess_pool.workers,
                 " (fast JPEG decode)" if self.cfg.fast_decode else "",
                 "device" if self.preprocess_pool.tiler else "CPU", self.encoder.normalizer.method)

    def start(self) -> None:
        if self.encoder is None:
            raise RuntimeError("load() must run before start()")
        self.batcher = TileBatcher(self.encoder.vit, self.max_batch_tiles, self.cfg.max_batch_wait_ms / 1000,
                                   self.cfg.max_queue_images, self.cfg.max_queue_tiles)
        self.batcher.start()
        self.metrics.queue_depth.set_function(lambda: self.batcher.queue_depth)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.preprocess_pool is not None:
            self.preprocess_pool.close()
        if self.redis is not None:
            await self.redis.close()

    async def encode(self, image: bytes, tiling: TilingOptions, vir: VirOptions,
                     codec: Codec | None, model_id: str, scope: str = "") -> EncodeResult:
        """One image to a stored embedding and its ref. A content-key hit in the store skips the
        ViT; a request for an image already being encoded joins that encode instead of running
        its own. `scope` (a tenant's) enters the key: hits never cross tenants. Raises
        InvalidRequest (bad image, tiling or model) and ResourceExhausted (queue)."""
        options = self._check(image, tiling, model_id)
        plan = self.router.plan(vir)
        key = content_key(image, tiling, vir, codec, self.cache_namespace, self.default_codec, scope)
        self.metrics.in_flight.inc()
        try:
            cached = await self._lookup(key)
            if cached is not None:
                self.metrics.cache_hits.inc()
                return EncodeResult(cached, StageTimings(), True, len(cached.tile_tokens))
            if key in self._encoding:
                return await self._join(key, self._encoding[key])
            self.metrics.cache_misses.inc()
            grid_key = route_key(image, tiling, self.cache_namespace, scope) if plan.group else ""
            task = asyncio.create_task(self._encode_miss(key, image, options, plan, codec or self.default_codec,
                                                         grid_key))
            self._encoding[key] = task
            task.add_done_callback(lambda t: self._encoded(key, t))
            return await self._wait(key, task)
        finally:
            self.metrics.in_flight.dec()

    async def _wait(self, key: str, task: asyncio.Task[EncodeResult]) -> EncodeResult:
        """Wait for a shared encode. A caller that goes away leaves it to the others; when the last
        one has gone, the encode is cancelled (a ViT batch it is in finishes, its place in the
        queue is given up)."""
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                if not task.done():
                    task.cancel()

    def _encoded(self, key: str, task: asyncio.Task[EncodeResult]) -> None:
        self._encoding.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone away before it ended

    async def _join(self, key: str, task: asyncio.Task[EncodeResult]) -> EncodeResult:
        """The same content is being encoded right now (a burst of one image): wait for that encode
        instead of running the ViT again. Counted and reported as a cache hit; the wait is queue time."""
        started = time.perf_counter_ns()
        result = await self._wait(key, task)
        self.metrics.cache_hits.inc()
        return EncodeResult(result.ref, StageTimings(queue_ns=time.perf_counter_ns() - started), True, result.num_tiles)

    async def route(self, image: bytes, tiling: TilingOptions, model_id: str, scope: str = "") -> RouteResult:
        """ViT + router only: each tile's compress score. The ViT grid stays here (briefly) for the
        `encode` of the same image that follows, so the ViT runs once per tile."""
        options = self._check(image, tiling, model_id)
        self.router.require_router()
        key = route_key(image, tiling, self.cache_namespace, scope)
        entry = self.routes.get(key)
        if entry is not None:
            return RouteResult(tuple(entry.scores.float().tolist()), StageTimings(), True)
        started = time.perf_counter_ns()
        tiles = await self._preprocess(image, options)
        batch = await self.batcher.submit(tiles.pixels, lambda grid: (grid, self.encoder.compress_scores(grid)))
        grid, scores = batch.output
        self.routes.put(key, scores, grid)
        elapsed = time.perf_counter_ns() - started
        return RouteResult(tuple(scores.float().tolist()),
                           StageTimings(queue_ns=batch.queue_ns, encode_ns=elapsed - batch.queue_ns), False)

    def _check(self, image: bytes, tiling: TilingOptions, model_id: str) -> ResolvedTiling:
        if self.batcher is None:
            raise Unavailable("vision replica is still loading")
        if model_id and model_id not in (self.model_id, self.model_id.split("@")[0]):
            raise ModelNotFound(f"this vision replica serves {self.model_id!r}, not {model_id!r}")
        if not image:
            raise InvalidRequest("empty image")
        if len(image) > self.cfg.max_image_bytes:
            raise InvalidRequest(f"image is {len(image)} bytes; the limit is {self.cfg.max_image_bytes}")
        return self._tiling(tiling)

    async def _lookup(self, key: str) -> EmbeddingRef | None:
        """This replica's memory first, then the shared Redis (another replica may have encoded it)."""
        entry = self.store.get(key)
        if entry is not None:
            return entry[0]
        if self.redis is None:
            return None
        try:
            return await self.redis.get_ref(key)
        except StoreUnavailable as exc:
            log.warning("embedding cache lookup skipped: %s", exc)
            return None

    async def _encode_miss(self, key: str, image: bytes, options: ResolvedTiling, plan: VirPlan,
                           codec: Codec, grid_key: str) -> EncodeResult:
        started = time.perf_counter_ns()
        output, queue_ns, batch_tiles = await self._features(image, options, plan, grid_key)
        features = output.features  # [sum(tile_tokens), hidden]
        blob = await asyncio.to_thread(codecs.encode, features, codec, self.cfg.compression)
        ref = EmbeddingRef(
            key=key, location=self.location, tile_tokens=output.tile_tokens,
            codec=codec, shape=(features.shape[0], features.shape[1]), num_bytes=len(blob),
            checksum=codecs.checksum(blob), model_id=self.model_id, compression=self.cfg.compression,
            access_token=secrets.token_urlsafe(18),
        )
        if not self.store.put(ref, blob):
            raise InvalidRequest(f"image embeddings ({len(blob)} bytes) exceed the store's capacity")
        ref = await self._share(ref, blob)
        elapsed = time.perf_counter_ns() - started
        self._record(output, batch_tiles, elapsed)
        return EncodeResult(ref, StageTimings(queue_ns=queue_ns, encode_ns=elapsed - queue_ns),
                            False, len(output.tile_tokens))

    async def _features(self, image: bytes, options: ResolvedTiling, plan: VirPlan,
                        grid_key: str) -> tuple[TileFeatures, int, int]:
        """(features, queue ns, tiles in the ViT batch). A routed image whose ViT grid is still
        here only runs its projectors; anything else runs the ViT in a batch."""
        entry = self.routes.get(grid_key) if grid_key else None
        if entry is not None and entry.grid is not None:
            grid = entry.grid
            return await self.batcher.run_exclusive(lambda: self.encoder.finish(grid, plan)), 0, 0
        tiles = await self._preprocess(image, options)
        batch = await self.batcher.submit(tiles.pixels, lambda grid: self.encoder.finish(grid, plan))
        return batch.output, batch.queue_ns, batch.batch_tiles

    async def _preprocess(self, image: bytes, options: ResolvedTiling) -> ImageTiles:
        try:
            return await self.preprocess_pool.run(image, options)
        except ImageDecodeError as exc:
            raise InvalidRequest(f"cannot decode image: {exc}") from exc

    def _record(self, output: TileFeatures, batch_tiles: int, elapsed_ns: int) -> None:
        m = self.metrics
        m.images.inc()
        m.tiles.inc(len(output.tile_tokens))
        m.compressed_tiles.inc(sum(n < self.encoder.tokens_per_tile for n in output.tile_tokens))
        if batch_tiles:
            m.batch_tiles.observe(batch_tiles)
        m.encode_seconds.observe(elapsed_ns / 1e9)

    async def _share(self, ref: EmbeddingRef, blob: bytes) -> EmbeddingRef:
        """Also publish to Redis when configured; this replica's memory stays the fallback."""
        if self.redis is None:
            return ref
        shared = dataclasses.replace(ref, location=self.redis.location, fallback_location=self.location)
        try:
            await self.redis.put(shared, blob)
        except StoreUnavailable as exc:
            log.warning("serving embeddings from memory only: %s", exc)
            return ref
        return shared

    def chunks(self, key: str, token: str) -> Iterator[tuple[int, bytes, int]]:
        """(offset, bytes, total) pieces of a stored blob, for FetchEmbedding. `token` must be
        the one issued with its ref; a wrong one reads as a missing key (no oracle)."""
        entry = self.store.get_with_token(key, token)
        if entry is None:
            raise NotFound(f"embedding {key!r} is not in this replica's store (expired or evicted)")
        blob, step = entry[1], self.cfg.fetch_chunk_bytes
        self.metrics.fetched_bytes.inc(len(blob))
        for offset in range(0, max(len(blob), 1), step):
            yield offset, blob[offset : offset + step], len(blob)

    def info(self) -> dict:
        enc = self.encoder
        return dict(model_id=self.model_id, hidden_size=enc.hidden_size, tile_size=enc.tile_size,
                    tokens_per_tile=enc.tokens_per_tile, codec=self.default_codec,
                    max_batch_tiles=self.max_batch_tiles, has_router=enc.has_router,
                    device=describe(enc.device, enc.dtype), weight_bytes=enc.weight_bytes(),
                    cache_namespace=self.cache_namespace, default_vir=self.router.effective_default,
                    vir_relative_threshold=self.router.relative, vir_absolute_threshold=self.router.absolute)

    def _tiling(self, t: TilingOptions) -> ResolvedTiling:
        try:
            return ResolvedTiling(
                min_tiles=t.min_tiles or self.cfg.min_tiles,
                max_tiles=t.max_tiles or self.cfg.max_tiles,
                use_thumbnail=self.cfg.use_thumbnail if t.use_thumbnail is None else t.use_thumbnail,
                tile_size=self.encoder.tile_size,
            )
        except ValueError as exc:
            raise InvalidRequest(f"bad tiling options: {exc}") from exc

