"""The vision service's Prometheus metrics (vLLM-style names). `dvd:vision_queue_depth`
(images waiting for or inside a ViT batch) is the per-replica load signal the autoscaler
targets; counters become rates (tiles/s) in PromQL."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 13, 16, 24, 32, 48, 64, 128)


class VisionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge("dvd:vision_queue_depth", "Images waiting for or in a ViT batch", registry=registry)
        self.in_flight = Gauge("dvd:vision_requests_in_flight", "Encode calls being served", registry=registry)
        self.batch_tiles = Histogram("dvd:vision_batch_tiles", "Tiles per ViT batch", buckets=BATCH_BUCKETS,
                                     registry=registry)
        self.tiles = Counter("dvd:vision_tiles_encoded", "Tiles through the ViT", registry=registry)
        self.compressed_tiles = Counter("dvd:vision_tiles_compressed",
                                        "Tiles the ViR router sent through mlp2 (64 tokens instead of 256)",
                                        registry=registry)
        self.images = Counter("dvd:vision_images_encoded", "Images encoded (cache misses)", registry=registry)
        self.encode_seconds = Histogram("dvd:vision_encode_seconds", "Encode latency of a cache miss (queue included)",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.cache_hits = Counter("dvd:vision_cache_hits", "Encode calls answered from a store", registry=registry)
        self.cache_misses = Counter("dvd:vision_cache_misses", "Encode calls that ran the ViT", registry=registry)
        self.store_bytes = Gauge("dvd:vision_store_bytes", "Bytes held in this replica's embedding store",
                                 registry=registry)
        self.fetched_bytes = Counter("dvd:vision_fetch_bytes", "Embedding bytes served to language replicas",
                                     registry=registry)
