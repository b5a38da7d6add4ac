"""`dvd bench transport`: what moving visual features costs, measured side by side in one run.

1. Codecs: bytes per 448px tile and encode/decode time per tile for each codec at a given LLM
   hidden size (896 = InternVL3-1B, 3584 = InternVL3-8B).
2. Transfer over loopback: one blob (default: 13 tiles of the 8B model in bf16, ~23 MiB) pulled
   through gRPC FetchEmbedding, read from Redis, and copied over a plain TCP socket (the floor).
Method: each measurement is the median of `repeats` runs after one warm-up run, on this machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from dvd import codec
from dvd.grpc_server import GrpcService
from dvd.redis_store import RedisStore
from dvd.store import MemoryStore
from dvd.types import Codec, Compression, EmbeddingRef
from protos.v1 import vision_pb2, vision_pb2_grpc

TOKENS_PER_TILE = 256
CODECS = [(Codec.BF16, Compression.NONE), (Codec.FP16, Compression.NONE), (Codec.FP8_E4M3, Compression.NONE),
          (Codec.INT8, Compression.NONE), (Codec.INT8, Compression.ZSTD), (Codec.INT8, Compression.LZ4),
          (Codec.BF16, Compression.ZSTD)]


@dataclass
class CodecRow:
    hidden: int
    codec: str
    bytes_per_tile: int
    ratio_vs_bf16: float
    encode_ms_per_tile: float
    decode_ms_per_tile: float


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_codecs(hidden_sizes: list[int], tiles: int, repeats: int, features: torch.Tensor | None = None) -> list[CodecRow]:
    rows = []
    for hidden in hidden_sizes:
        x = features if features is not None and features.shape[1] == hidden else _features(tiles, hidden)
        bf16_bytes = x.shape[0] * hidden * 2
        for kind, compression in CODECS:
            blob = codec.encode(x, kind, compression)
            enc = _median_ms(lambda: codec.encode(x, kind, compression), repeats)
            dec = _median_ms(lambda: codec.decode(blob, kind, tuple(x.shape), compression), repeats)
            name = kind.value + ("" if compression is Compression.NONE else f"+{compression.value}")
            rows.append(CodecRow(hidden, name, len(blob) // tiles, len(blob) / bf16_bytes, enc / tiles, dec / tiles))
    return rows


def _features(tiles: int, hidden: int) -> torch.Tensor:
    """Stand-in activations with a heavy tail like projector outputs (a few large channels)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tiles * TOKENS_PER_TILE, hidden, generator=g)
    x[:, :: max(hidden // 16, 1)] *= 8.0
    return x


async def bench_transfer(num_bytes: int, repeats: int, redis_url: str) -> dict[str, float]:
    """MiB/s for the same bytes over gRPC pull, Redis, and a plain socket (loopback)."""
    blob = bytes(torch.randint(0, 256, (num_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).numpy())
    results = {"socket": await _time_socket(blob, repeats), "grpc_pull": await _time_grpc(blob, repeats)}
    if redis_url:
        results["redis"] = await _time_redis(blob, repeats, redis_url)
    return {k: num_bytes / (1024 * 1024) / v for k, v in results.items()}


async def _median_s(fn, repeats: int) -> float:
    await fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _time_socket(blob: bytes, repeats: int) -> float:
    async def handle(reader, writer):
        writer.write(blob)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def pull():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await reader.read(-1)
        assert len(data) == len(blob)
        writer.close()

    try:
        return await _median_s(pull, repeats)
    finally:
        server.close()


class _BlobServicer(vision_pb2_grpc.VisionEncoderServicer):
    def __init__(self, store: MemoryStore, chunk: int) -> None:
        self.store, self.chunk = store, chunk

    async def FetchEmbedding(self, request, context):
        blob = self.store.get(request.key)[1]
        for offset in range(0, len(blob), self.chunk):
            yield vision_pb2.EmbeddingChunk(data=blob[offset : offset + self.chunk], offset=offset, total_bytes=len(blob))


async def _time_grpc(blob: bytes, repeats: int) -> float:
    """The language service's real fetch path (EmbeddingFetcher) against a real gRPC server."""
    from language_service.fetch import EmbeddingFetcher

    store = MemoryStore(max_bytes=len(blob) * 2, ttl_s=3600)
    ref = EmbeddingRef("k", "", (len(blob),), Codec.INT8, (1, len(blob) - 4), len(blob), codec.checksum(blob), "m")
    store.put(ref, blob)
    service = GrpcService(["dvd.v1.VisionEncoder"])
    vision_pb2_grpc.add_VisionEncoderServicer_to_server(_BlobServicer(store, 1024 * 1024), service.server)
    port = service.bind("127.0.0.1", 0)
    await service.start()
    fetcher = EmbeddingFetcher(timeout_s=60)
    located = dataclasses.replace(ref, location=f"grpc://127.0.0.1:{port}")
    try:
        return await _median_s(lambda: fetcher._blob(located, "bench"), repeats)
    finally:
        await fetcher.close()
        await service.server.stop(0)


async def _time_redis(blob: bytes, repeats: int, url: str) -> float:
    store = RedisStore(url, ttl_s=600)
    ref = EmbeddingRef("bench", url, (1,), Codec.INT8, (1, len(blob) - 4), len(blob), codec.checksum(blob), "m")
    await store.put(ref, blob)
    try:
        return await _median_s(lambda: store.get_blob("bench"), repeats)
    finally:
        await store.close()



def register(kinds) -> None:
    """Add `dvd bench transport` to the `dvd bench` sub-commands."""
    p = kinds.add_parser("transport", help="codec bytes/cost, loopback transfer rates, cache-hit TTFT")
    p.add_argument("--hidden", default="896,3584", help="LLM hidden sizes (896: InternVL3-1B, 3584: 8B)")
    p.add_argument("--tiles", type=int, default=5, help="tiles per codec measurement")
    p.add_argument("--transfer-tiles", type=int, default=13, help="tiles of the 8B model in the transfer blob")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--preset", default="small", help="checkpoint for the cache-hit TTFT run")
    p.add_argument("--checkpoint-root", default="checkpoints")
    p.add_argument("--ttft-images", type=int, default=6, help="distinct 5-tile images (each sent twice)")
    p.set_defaults(func=main)


def main(a) -> int:
    from pathlib import Path
    from tempfile import mkdtemp

    from stack.launcher import LocalStack, StackOptions
    from stack.local_redis import RedisServer
    from tools.bench.cache_ttft import bench_cache_ttft
    from tools.bench.workload import ImageSize, synthetic_image
    from tools.checkpoint import ensure_checkpoint

    print("## Codecs: bytes and cost per 448px tile (256 tokens)\n")
    print("| hidden | codec | bytes/tile | vs bf16 | encode ms/tile | decode ms/tile |\n|---|---|---|---|---|---|")
    for r in bench_codecs([int(h) for h in a.hidden.split(",")], a.tiles, a.repeats):
        print(f"| {r.hidden} | {r.codec} | {r.bytes_per_tile:,} | {r.ratio_vs_bf16:.3f}x | "
              f"{r.encode_ms_per_tile:.2f} | {r.decode_ms_per_tile:.2f} |")
    num_bytes = a.transfer_tiles * TOKENS_PER_TILE * 3584 * 2
    redis = RedisServer(Path(mkdtemp(prefix="dvd-bench-redis-"))).start()
    try:
        rates = asyncio.run(bench_transfer(num_bytes, a.repeats, redis.url))
    finally:
        redis.stop()
    print(f"\n## Loopback transfer of {num_bytes / 2**20:.1f} MiB ({a.transfer_tiles} tiles, 8B bf16)\n")
    print("| path | MiB/s | vs plain socket |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / rates['socket']:.2f}x |")
    checkpoint = ensure_checkpoint(a.preset, Path(a.checkpoint_root))
    # The language replica's prefix cache off: the hit would also reuse the repeated prompt's KV
    # (`dvd bench engine` measures that); this row is what the embedding cache alone saves.
    opts = StackOptions(checkpoint=checkpoint, device="cpu", log_dir=Path(mkdtemp(prefix="dvd-bench-logs-")),
                        prefix_caching=False)
    with LocalStack(opts) as stack:
        images = [synthetic_image(ImageSize(896, 896), seed=1000 + i).data for i in range(a.ttft_images + 1)]
        ttft = bench_cache_ttft(stack.grpc_target, images)
    print(f"\n## TTFT, 5-tile image, {a.preset} preset: cache miss vs hit ({a.ttft_images} images, medians)\n")
    print(f"| miss ms | hit ms | hit / miss |\n|---|---|---|\n| {ttft['miss_ttft_ms']:.1f} | "
          f"{ttft['hit_ttft_ms']:.1f} | {ttft['hit_over_miss']:.2f}x |")
    return 0
