"""The metric math of `dvd bench serve`, pure and separate from I/O so it can be checked against
hand-computed fixtures.

Definitions (the ones `vllm bench serve` and AIPerf use):
- TTFT: request sent -> first streamed chunk that carries output tokens.
- ITL: the gaps between consecutive token-carrying chunks of one request (all requests pooled).
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1), per request; a one-token reply has no
  TPOT (left out of the TPOT statistics; it meets any TPOT SLO).
- E2E latency: request sent -> last byte of the reply.
- Throughput: successful requests (or their output tokens) / the point's duration (first request
  sent -> last reply finished).
- Goodput: successful requests that meet every SLO / the same duration.
Percentiles interpolate linearly between order statistics (numpy's default method).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

STAGES = ("queue", "encode", "transfer", "prefill", "decode")  # the gateway's StageTimings, in order
PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What the client saw of one request. Times in seconds, relative to the point's start."""

    sent_s: float
    ok: bool = False
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    num_images: int = 0
    num_tiles: int = 0  # tiles the images are cut into (default tiling), cache hits included
    cached_images: int = 0  # images the gateway served from its embedding cache
    stage_s: dict[str, float] = field(default_factory=dict)  # server-side timings, STAGES keys
    error_kind: str = ""
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.output_tokens < 2 or self.ttft_s is None or self.e2e_s is None:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in milliseconds; None: not constrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> Slo:
        """`ttft:500,tpot:50` (any of ttft, tpot, e2e), milliseconds."""
        values: dict[str, float] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, sep, value = item.partition(":")
            if not sep or name not in ("ttft", "tpot", "e2e"):
                raise ValueError(f"bad SLO {item!r}: expected ttft:MS, tpot:MS or e2e:MS")
            values[f"{name}_ms"] = float(value)
        return cls(**values)

    def met_by(self, r: RequestRecord) -> bool:
        if not r.ok:
            return False
        checks = ((self.ttft_ms, r.ttft_s), (self.tpot_ms, r.tpot_s), (self.e2e_ms, r.e2e_s))
        return all(limit is None or value is None or value * 1000 <= limit for limit, value in checks)

    def as_dict(self) -> dict[str, float | None]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), numpy's linear interpolation; NaN for no values."""
    return float(np.percentile(values, q)) if values else math.nan


def distribution_ms(values_s: list[float]) -> dict[str, float]:
    """mean, p50, p90, p99 in milliseconds (NaN when there are no values)."""
    stats = {"mean": sum(values_s) / len(values_s) * 1000 if values_s else math.nan}
    stats.update({f"p{q}": percentile(values_s, q) * 1000 for q in PERCENTILES})
    return stats


def inter_token_latencies(chunk_times_s: list[float]) -> list[float]:
    """The gaps between consecutive token-carrying chunk arrivals."""
    return [b - a for a, b in zip(chunk_times_s, chunk_times_s[1:])]


def duration_s(records: list[RequestRecord]) -> float:
    """First request sent -> last one finished (failed ones count while they were in flight)."""
    if not records:
        return 0.0
    ends = [r.sent_s + (r.e2e_s or 0.0) for r in records]
    return max(ends) - min(r.sent_s for r in records)


@dataclass(frozen=True)
class Summary:
    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # successful requests / s
    output_throughput: float  # output tokens of successful requests / s
    goodput: float  # requests meeting every SLO / s
    goodput_fraction: float  # of the successful requests
    mean_output_tokens: float
    mean_tiles_per_request: float
    cache_hit_rate: float  # cached images / images, over successful requests
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    stage_ms: dict[str, dict[str, float]]  # per STAGES name: mean, p50, p90, p99 (server-side)
    errors: dict[str, int]  # error kind -> count


def summarize(records: list[RequestRecord], slo: Slo) -> Summary:
    ok = [r for r in records if r.ok]
    duration = duration_s(records)
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    good = sum(slo.met_by(r) for r in ok)
    images = sum(r.num_images for r in ok)
    return Summary(
        completed=len(ok), failed=len(records) - len(ok), duration_s=duration,
        request_throughput=per_s(len(ok)), output_throughput=per_s(sum(r.output_tokens for r in ok)),
        goodput=per_s(good), goodput_fraction=good / len(ok) if ok else 0.0,
        mean_output_tokens=sum(r.output_tokens for r in ok) / len(ok) if ok else 0.0,
        mean_tiles_per_request=sum(r.num_tiles for r in ok) / len(ok) if ok else 0.0,
        cache_hit_rate=sum(r.cached_images for r in ok) / images if images else 0.0,
        ttft_ms=distribution_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_ms=distribution_ms([t for r in ok if (t := r.tpot_s) is not None]),
        itl_ms=distribution_ms([gap for r in ok for gap in r.itl_s]),
        e2e_ms=distribution_ms([r.e2e_s for r in ok if r.e2e_s is not None]),
        stage_ms={stage: distribution_ms([r.stage_s.get(stage, 0.0) for r in ok]) for stage in STAGES},
        errors=dict(Counter(r.error_kind for r in records if not r.ok)),
    )
