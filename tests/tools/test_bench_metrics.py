"""The metric math of `dvd bench serve` against hand-computed fixtures, the workload generator
(tile classes, reuse, determinism) and the `dvd plan` arithmetic."""

from __future__ import annotations

import math

import pytest

from tools.bench.compare import pool_rounds
from tools.bench.metrics import RequestRecord, Slo, inter_token_latencies, percentile, summarize
from tools.bench.plan import Mix, StageRates, plan
from tools.bench.serve import PointResult
from tools.bench.workload import ImageSize, WorkloadSpec, build_requests, parse_sizes, tiles_for


def test_percentile_interpolates_linearly_between_order_statistics():
    values = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4; rank = 3 * q / 100
    assert percentile(values, 50) == pytest.approx(2.5)  # rank 1.5
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 2.7
    assert percentile(values, 99) == pytest.approx(3.97)  # rank 2.97
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_inter_token_latencies_are_the_gaps_between_chunks():
    assert inter_token_latencies([1.0, 1.25, 1.75, 2.0]) == pytest.approx([0.25, 0.5, 0.25])
    assert inter_token_latencies([3.0]) == []


def test_tpot_excludes_the_first_token_and_needs_two():
    assert RequestRecord(0, ok=True, ttft_s=0.5, e2e_s=2.5, output_tokens=5).tpot_s == pytest.approx(0.5)
    assert RequestRecord(0, ok=True, ttft_s=0.5, e2e_s=0.5, output_tokens=1).tpot_s is None
    assert RequestRecord(0, ok=False, ttft_s=0.5, e2e_s=2.5, output_tokens=5).tpot_s is None


def test_slo_parse():
    assert Slo.parse("ttft:200, tpot:150") == Slo(ttft_ms=200, tpot_ms=150)
    assert Slo.parse("e2e:1000") == Slo(e2e_ms=1000)
    assert Slo.parse("") == Slo()
    for bad in ("ttft=200", "latency:5", "ttft"):
        with pytest.raises(ValueError):
            Slo.parse(bad)


def _records() -> list[RequestRecord]:
    stages = {"queue": 0.01, "encode": 0.2, "transfer": 0.0, "prefill": 0.05, "decode": 1.0}
    return [
        # good: TTFT 100 ms, TPOT (1.1 - 0.1) / 10 = 100 ms
        RequestRecord(0.0, ok=True, ttft_s=0.1, e2e_s=1.1, output_tokens=11, itl_s=[0.05, 0.15], num_images=1,
                      cached_images=1, stage_s=stages),
        # misses the TTFT SLO (300 ms > 200)
        RequestRecord(0.0, ok=True, ttft_s=0.3, e2e_s=1.3, output_tokens=11, itl_s=[0.1], num_images=1,
                      stage_s=stages),
        # misses the TPOT SLO: (2.1 - 0.1) / 10 = 200 ms > 150
        RequestRecord(0.5, ok=True, ttft_s=0.1, e2e_s=2.1, output_tokens=11, num_images=2, stage_s=stages),
        # failed: not counted anywhere but errors and the duration
        RequestRecord(1.0, ok=False, e2e_s=0.5, itl_s=[9.0], output_tokens=3, error_kind="http_503"),
        # one token: no TPOT, so it meets the TPOT SLO
        RequestRecord(1.0, ok=True, ttft_s=0.15, e2e_s=0.15, output_tokens=1, stage_s={**stages, "encode": 0.0}),
    ]


def test_summary_against_hand_computed_values():
    s = summarize(_records(), Slo(ttft_ms=200, tpot_ms=150))
    duration = 2.6  # first sent at 0.0, last finished at 0.5 + 2.1
    assert (s.completed, s.failed) == (4, 1)
    assert s.duration_s == pytest.approx(duration)
    assert s.request_throughput == pytest.approx(4 / duration)
    assert s.output_throughput == pytest.approx(34 / duration)  # 11 + 11 + 11 + 1
    assert s.goodput == pytest.approx(2 / duration) and s.goodput_fraction == pytest.approx(0.5)
    assert s.mean_output_tokens == pytest.approx(8.5)
    # TTFT over 0.1 0.3 0.1 0.15 s: mean 162.5 ms; sorted 0.1 0.1 0.15 0.3, p50 at rank 1.5
    assert s.ttft_ms["mean"] == pytest.approx(162.5) and s.ttft_ms["p50"] == pytest.approx(125.0)
    assert s.ttft_ms["p99"] == pytest.approx(150 + (300 - 150) * 0.97)  # rank 2.97
    # TPOT over 100 100 200 ms (the one-token request has none)
    assert s.tpot_ms["mean"] == pytest.approx(400 / 3) and s.tpot_ms["p50"] == pytest.approx(100.0)
    # ITL pooled over the successful requests: 50 150 100 ms
    assert s.itl_ms["mean"] == pytest.approx(100.0) and s.itl_ms["p90"] == pytest.approx(140.0)
    assert s.e2e_ms["p50"] == pytest.approx(1200.0)  # 0.15 1.1 1.3 2.1 s
    assert s.stage_ms["encode"]["mean"] == pytest.approx(150.0)  # 200 200 200 0 ms
    assert s.cache_hit_rate == pytest.approx(1 / 4)  # 1 cached of 1 + 1 + 2 images
    assert s.errors == {"http_503": 1}


def test_goodput_without_slo_counts_every_success():
    s = summarize(_records(), Slo())
    assert s.goodput == pytest.approx(s.request_throughput) and s.goodput_fraction == 1.0


def test_summary_of_nothing_is_empty_not_an_error():
    s = summarize([], Slo())
    assert (s.completed, s.request_throughput, s.goodput) == (0, 0.0, 0.0)
    assert math.isnan(s.ttft_ms["p50"])


def test_tile_classes_match_the_paper_workloads():
    assert [tiles_for(n, n) for n in (448, 896, 1344)] == [1, 5, 10]
    assert parse_sizes("448x448:1,896x896:2") == (ImageSize(448, 448, 1.0), ImageSize(896, 896, 2.0))
    with pytest.raises(ValueError):
        parse_sizes("896")


def test_workload_reuse_and_determinism():
    spec = WorkloadSpec(image_sizes=(ImageSize(64, 48),), reuse=0.0, seed=3)
    fresh = build_requests(spec, 6)
    assert len({r.images[0].data for r in fresh}) == 6
    assert [r.images for r in build_requests(spec, 6)] == [r.images for r in fresh]  # seeded
    assert build_requests(spec, 1, stream_seed=1)[0].images != fresh[0].images  # another sweep point
    same = build_requests(WorkloadSpec(image_sizes=(ImageSize(64, 48),), reuse=1.0, seed=3), 5)
    assert len({r.images[0].data for r in same}) == 1
    assert len({r.prompt for r in same}) == 5 and all(r.max_tokens == 64 for r in same)
    assert same[0].data_urls[0].startswith("data:image/jpeg;base64,")


def test_plan_against_hand_computed_values():
    rates = StageRates(vision_tiles_per_s=50, prefill_tokens_per_s=5000, decode_tokens_per_s=200)
    mix = Mix(tiles_weights=((5, 1.0),), prompt_tokens=60, output_tokens=100)
    p = plan(rates, mix, target_rps=2, utilization=0.8)
    # vision 5 / 50 = 0.1 s; language (60 + 5 * 256) / 5000 + 100 / 200 = 0.268 + 0.5 = 0.768 s
    assert p.vision_s_per_request == pytest.approx(0.1) and p.language_s_per_request == pytest.approx(0.768)
    assert (p.vision_replicas, p.language_replicas, p.ratio) == (1, 2, "1:2")  # ceil(0.25), ceil(1.92)
    assert p.vision_utilization == pytest.approx(0.2) and p.language_utilization == pytest.approx(0.768)
    assert p.max_rps == pytest.approx(2 * 0.8 / 0.768) and p.bottleneck == "language"
    assert p.colocated_replicas == 3  # ceil(2 * 0.868 / 0.8)
    half = plan(rates, Mix(((5, 1.0),), reuse=0.5, prompt_tokens=60, output_tokens=100), 2, 0.8)
    assert half.vision_s_per_request == pytest.approx(0.05)
    assert Mix(Mix.parse_tiles("1:1,10:3")).tiles_per_image == pytest.approx(7.75)


def test_rounds_pool_as_if_back_to_back():
    def point(records, load):
        return PointResult(0.0, "concurrency", 2, summarize(records, Slo()), records, (load, 0.0, 0.0))

    first = point([RequestRecord(5.0, ok=True, ttft_s=0.1, e2e_s=1.0, output_tokens=4)], 1.0)  # 1 s
    second = point([RequestRecord(0.5, ok=True, ttft_s=0.3, e2e_s=2.0, output_tokens=4),
                    RequestRecord(1.5, ok=True, ttft_s=0.2, e2e_s=2.0, output_tokens=4)], 3.0)  # 0.5 .. 3.5: 3 s
    pooled = pool_rounds([first, second], Slo())
    assert pooled.summary.completed == 3 and pooled.summary.duration_s == pytest.approx(4.0)
    assert pooled.summary.request_throughput == pytest.approx(3 / 4)
    assert pooled.summary.ttft_ms["p50"] == pytest.approx(200.0) and pooled.load_average[0] == 3.0
