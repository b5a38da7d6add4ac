"""The gateway's Prometheus metrics (served on the REST port at `/metrics`): requests, latency
as clients see it (TTFT, end to end), the per-stage latencies reported by the pools, the
embedding cache, and errors by kind."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dvd.errors import DvdError, kind_of
from dvd.types import Delta

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGES = ("queue", "encode", "transfer", "prefill", "decode")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.in_flight = Gauge("dvd:gateway_requests_in_flight", "Chat requests being served", registry=registry)
        self.requests = Counter("dvd:gateway_requests", "Chat requests finished, by outcome", ["outcome"],
                                registry=registry)
        self.ttft = Histogram("dvd:gateway_time_to_first_token_seconds", "Time to the first token",
                              buckets=BUCKETS, registry=registry)
        self.e2e = Histogram("dvd:gateway_e2e_request_latency_seconds", "Request latency, first byte in to last out",
                             buckets=BUCKETS, registry=registry)
        self.stage = Histogram("dvd:gateway_stage_seconds", "Per-stage time reported by the pools", ["stage"],
                               buckets=BUCKETS, registry=registry)
        self.output_tokens = Counter("dvd:gateway_output_tokens", "Generated tokens streamed out", registry=registry)
        self.images = Counter("dvd:gateway_images", "Images in requests, by cache outcome", ["cache"],
                              registry=registry)
        self.embeddings_lost = Counter("dvd:gateway_embeddings_lost", "Requests whose embeddings a language "
                                       "replica could not fetch (re-encoded)", registry=registry)

    async def track(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        """Pass a request's deltas through, observing latency, tokens, stages and the outcome."""
        started = time.perf_counter()
        first = True
        outcome = "cancelled"
        self.in_flight.inc()
        try:
            async with contextlib.aclosing(deltas):  # closed with us: its pool calls end when the client goes
                async for delta in deltas:
                    if first and delta.token_ids:
                        self.ttft.observe(time.perf_counter() - started)
                        first = False
                    self.output_tokens.inc(len(delta.token_ids))
                    if delta.finish_reason is not None:
                        self._final(delta)
                        outcome = delta.finish_reason.value
                    yield delta
        except DvdError as exc:
            outcome = kind_of(exc).grpc_code.name.lower()
            raise
        finally:
            self.in_flight.dec()
            self.requests.labels(outcome=outcome).inc()
            self.e2e.observe(time.perf_counter() - started)

    def record_images(self, hits: int, misses: int) -> None:
        self.images.labels(cache="hit").inc(hits)
        self.images.labels(cache="miss").inc(misses)

    def _final(self, delta: Delta) -> None:
        if delta.timings is not None:
            for stage in STAGES:
                self.stage.labels(stage=stage).observe(getattr(delta.timings, f"{stage}_ns") / 1e9)
