"""scripts/gpu_check.sh's CPU dry path: the same script and sections a GPU machine runs (engine
bench per attention backend, token check against InternVLForConditionalGeneration.generate),
on the tiny checkpoint in fp32, where the engine's solo greedy tokens must equal generate's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_cpu(tiny_ckpt, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "CHECKPOINT_ROOT": str(tmp_path)}
    subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), str(out), "--device", "cpu", "--dtype", "float32",
                    "--preset", str(tiny_ckpt), "--concurrency", "1,2", "--max-tokens", "4", "--prompt-tokens", "24",
                    "--check-prompts", "2", "--check-tokens", "6", "--poisson-requests", "3"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    runs = report["engine_bench"]
    assert [r["attention"] for r in runs] == ["sdpa", "eager"]  # no CUDA here: no graphs, no flash
    assert all(r["engine_tokens_per_s"]["1"] > 0 and r["kv_capacity"]["paged_peak"] > 0 for r in runs)
    assert runs[0]["generate_tokens_per_s"] and runs[0]["poisson"]
    check = report["token_check"]
    assert check["solo_agreement"] == 1.0 and check["solo_exact_sequences"] == 2
    assert report["fastapi_imported"] is False
    assert report["vision"]["check"] == "vision"  # the vision part: skipped without CUDA, its curve with it
    assert report["cuda_device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def test_device_tiling_bench_reports_equal_tiles_and_both_cpu_costs(tmp_path):
    from tools.bench import device_tiling

    out = tmp_path / "tiling.json"
    assert device_tiling.main(["--device", "cpu", "--rounds", "1", "--synthetic", "640x480:1,900x300:1",
                               "--synthetic-count", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["exact"] and report["tiles_equal"] and report["tiles"] > 2
    assert report["cpu_ms_per_tile_pillow"] > 0 and report["cpu_ms_per_tile_device_resize"] > 0
