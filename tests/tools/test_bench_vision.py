"""`dvd bench vision` on the tiny checkpoint and two small synthetic photos: every section runs
and reports what it measured; the feed ratio and the recommended ViT width are plain arithmetic."""

from __future__ import annotations

import pytest

from tools.bench import photos as photo_sets
from tools.bench.plan import preprocess_cores
from tools.bench.vision import VisionBenchOptions, format_report, run_vision_bench
from tools.bench.vit import VitBenchResult, recommend_width
from tools.cli import main as dvd


def test_every_section_runs_and_is_reported(tiny_ckpt):
    photos = tuple(photo_sets.synthetic_photos("500x400:1,900x600:1", 2))
    opts = VisionBenchOptions(checkpoint=tiny_ckpt, photos=photos, source="synthetic", workers=(1, 2),
                              kinds=("thread",), rounds=1, scaling_copies=1, requests=2, concurrency=2, device="cpu")
    result = run_vision_bench(opts)
    assert result.tiles == sum(photo_sets_tiles(p) for p in photos)
    assert all(ms >= 0 for ms in result.stage_ms.values()) and result.stage_ms["ViT"] > 0
    assert result.cpu_work.before_ms > 0 and result.cpu_work.uint8_ms > 0 and result.cpu_work.handoff_ms > 0
    assert result.stage_ms["resize + tile (on the device)"] > 0 and result.device_ops_per_image > 0
    assert set(result.scaling.tiles_per_s) == {("thread", 1), ("thread", 2)}
    assert result.encode_tiles_per_s > 0 and not result.fidelity
    report = format_report(result, opts)
    for text in ("| decode |", "| ViT |", "| codec |", "x lower", "| thread | 2 |", "Feed ratio", "device resize"):
        assert text in report


@pytest.mark.slow
def test_process_workers_and_fast_decode_fidelity(tiny_ckpt):
    photos = tuple(photo_sets.synthetic_photos("500x400:1,900x600:1", 2))
    opts = VisionBenchOptions(checkpoint=tiny_ckpt, photos=photos, source="synthetic", workers=(1, 2),
                              kinds=("thread", "process"), rounds=1, scaling_copies=1, requests=2, concurrency=2,
                              device="cpu", fidelity=True)
    result = run_vision_bench(opts)
    assert set(result.scaling.tiles_per_s) == {("thread", 1), ("thread", 2), ("process", 1), ("process", 2)}
    assert len(result.fidelity) == len(photo_sets.LARGE_SIZES)
    for row in result.fidelity:
        assert row.mean_abs > 0 and -1 <= row.cosine_min <= row.cosine_mean <= 1.0001
        assert 0 <= row.token_agreement <= 1
    report = format_report(result, opts)
    assert "| process | 2 |" in report and "PSNR dB" in report and "--fast-decode on large JPEGs" in report


def photo_sets_tiles(photo: photo_sets.Photo) -> int:
    from vision_service.preprocess import ResolvedTiling, preprocess_pixels

    return preprocess_pixels(photo.data, ResolvedTiling()).num_tiles


def test_packaged_photos_are_real_colour_photos_when_installed():
    found = photo_sets.packaged_photos()
    if not found:
        pytest.skip("neither scikit-image nor matplotlib is installed")
    assert all(p.data[:2] == b"\xff\xd8" for p in found)  # all JPEG on the wire
    assert len({p.data for p in found}) == len(found)


def test_preprocess_cores_is_the_feed_ratio():
    assert preprocess_cores(1.8, 3.6) == pytest.approx(2.0)
    assert preprocess_cores(2.0, 3.0, scaling=0.75) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        preprocess_cores(0, 1)


def test_plan_prints_the_preprocessing_cores(capsys):
    dvd(["plan", "--vision-tiles-per-s", "500", "--prefill-tokens-per-s", "20000", "--decode-tokens-per-s", "3000",
         "--preprocess-ms-per-tile", "4"])
    assert "preprocessing: 2.0 CPU cores per vision replica (2 ms ViT per tile" in capsys.readouterr().out


def test_recommended_width_is_the_narrowest_within_tolerance():
    result = VitBenchResult("cuda", {1: 100.0, 8: 30.0, 16: 20.5, 32: 20.0}, {1: 0.0, 8: 0.0, 16: 0.0, 32: 0.0})
    assert recommend_width(result) == 16
