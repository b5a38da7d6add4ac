"""`dvd plan`: how many vision and language replicas a target load needs, from measured
per-stage rates and a workload mix - the first sizing question of separate pools.

Model (a fluid, steady-state one: each pool must supply the work that arrives per second):
- a request brings `images_per_request` images whose tile counts follow the mix; a fraction
  `reuse` of them are embedding-cache hits and cost the vision pool nothing;
- vision work per request = tiles that miss the cache / (tiles/s of one vision replica);
- language work per request = prompt tokens (text + `tokens_per_tile` per tile, hits included)
  / (prefill tokens/s of one replica) + output tokens / (decode tokens/s of one replica, at the
  batch size it runs at under load);
- replicas of a pool = ceil(target req/s x work per request / utilization), at least 1; the
  utilization cap (default 0.8) leaves headroom for bursts, since queueing delay grows without
  bound as a pool nears 100 %.
The colocated line is the same arithmetic for replicas that each run both stages one after the
other (no overlap between vision and language), the `--monolithic` baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StageRates:
    """Measured throughput of ONE replica of each pool."""

    vision_tiles_per_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float

    def __post_init__(self) -> None:
        if min(self.vision_tiles_per_s, self.prefill_tokens_per_s, self.decode_tokens_per_s) <= 0:
            raise ValueError("rates must be positive")


@dataclass(frozen=True)
class Mix:
    tiles_weights: tuple[tuple[int, float], ...] = ((5, 1.0),)  # (tiles per image, weight)
    images_per_request: float = 1.0
    reuse: float = 0.0
    prompt_tokens: int = 64  # text tokens of the prompt
    output_tokens: int = 128
    tokens_per_tile: int = 256  # 256; 64 for a ViR-compressed tile

    @classmethod
    def parse_tiles(cls, text: str) -> tuple[tuple[int, float], ...]:
        """`5` or `1:0.3,5:0.5,10:0.2` (tiles:weight)."""
        pairs = []
        for item in filter(None, (s.strip() for s in text.split(","))):
            tiles, _, weight = item.partition(":")
            pairs.append((int(tiles), float(weight or 1)))
        if not pairs or any(t < 1 or w <= 0 for t, w in pairs):
            raise ValueError(f"bad tile mix {text!r}")
        return tuple(pairs)

    @property
    def tiles_per_image(self) -> float:
        total = sum(w for _, w in self.tiles_weights)
        return sum(t * w for t, w in self.tiles_weights) / total

    @property
    def tiles_per_request(self) -> float:
        return self.images_per_request * self.tiles_per_image


@dataclass(frozen=True)
class Plan:
    target_rps: float
    vision_replicas: int
    language_replicas: int
    vision_s_per_request: float  # replica-seconds of vision work per request
    language_s_per_request: float
    vision_utilization: float  # at the target load with the recommended replicas
    language_utilization: float
    max_rps: float  # the recommended replicas at the utilization cap
    bottleneck: str
    colocated_replicas: int  # replicas running both stages, for the same load and cap

    @property
    def ratio(self) -> str:
        g = math.gcd(self.vision_replicas, self.language_replicas)
        return f"{self.vision_replicas // g}:{self.language_replicas // g}"


def per_request_seconds(rates: StageRates, mix: Mix) -> tuple[float, float]:
    vision = mix.tiles_per_request * (1 - mix.reuse) / rates.vision_tiles_per_s
    prompt = mix.prompt_tokens + mix.tiles_per_request * mix.tokens_per_tile
    language = prompt / rates.prefill_tokens_per_s + mix.output_tokens / rates.decode_tokens_per_s
    return vision, language


def plan(rates: StageRates, mix: Mix, target_rps: float, utilization: float = 0.8) -> Plan:
    if target_rps <= 0 or not 0 < utilization <= 1:
        raise ValueError("need target_rps > 0 and 0 < utilization <= 1")
    vision_s, language_s = per_request_seconds(rates, mix)
    n_vision = max(1, math.ceil(target_rps * vision_s / utilization - 1e-9))
    n_language = max(1, math.ceil(target_rps * language_s / utilization - 1e-9))
    vision_cap = n_vision * utilization / vision_s if vision_s else math.inf
    language_cap = n_language * utilization / language_s
    return Plan(target_rps, n_vision, n_language, vision_s, language_s,
                target_rps * vision_s / n_vision, target_rps * language_s / n_language,
                min(vision_cap, language_cap), "vision" if vision_cap < language_cap else "language",
                max(1, math.ceil(target_rps * (vision_s + language_s) / utilization - 1e-9)))


def preprocess_cores(vit_ms_per_tile: float, cpu_ms_per_tile: float, scaling: float = 1.0) -> float:
    """CPU cores one vision replica needs so preprocessing keeps its ViT busy: the ViT takes
    `vit_ms_per_tile` of accelerator time per tile, preprocessing `cpu_ms_per_tile` of one core's
    (`dvd bench vision`, "CPU work per tile"), and each added worker brings `scaling` of a core's
    rate (1.0: perfect; the bench's worker scaling measures it)."""
    if min(vit_ms_per_tile, cpu_ms_per_tile) <= 0 or not 0 < scaling <= 1:
        raise ValueError("need positive ms per tile and 0 < scaling <= 1")
    return cpu_ms_per_tile / vit_ms_per_tile / scaling


def format_plans(plans: list[Plan], rates: StageRates, mix: Mix) -> str:
    vision_s, language_s = per_request_seconds(rates, mix)
    lines = [
        f"workload: {mix.images_per_request:g} image(s)/request, {mix.tiles_per_image:.2f} tiles/image, "
        f"reuse {mix.reuse:.0%}, {mix.prompt_tokens} text + {mix.tiles_per_request * mix.tokens_per_tile:.0f} image "
        f"prompt tokens, {mix.output_tokens} output tokens",
        f"rates per replica: vision {rates.vision_tiles_per_s:g} tiles/s; language prefill "
        f"{rates.prefill_tokens_per_s:g} tokens/s, decode {rates.decode_tokens_per_s:g} tokens/s",
        f"work per request: vision {vision_s * 1000:.1f} ms, language {language_s * 1000:.1f} ms (replica time)",
        "",
        "| target req/s | vision replicas | language replicas | vision:language | vision util | language util | "
        "max req/s | bottleneck | colocated replicas |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    lines += [f"| {p.target_rps:g} | {p.vision_replicas} | {p.language_replicas} | {p.ratio} | "
              f"{p.vision_utilization:.0%} | {p.language_utilization:.0%} | {p.max_rps:.2f} | {p.bottleneck} | "
              f"{p.colocated_replicas} |" for p in plans]
    return "\n".join(lines)
