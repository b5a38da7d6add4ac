"""`dvd bench serve` against a live stack (tiny preset), over REST and gRPC, with a tiny bounded
workload: the JSON has every field filled and the plot is written. Also: `--cpus` really pins
each process of a stack, and `dvd bench compare` runs its three deployments end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

DVD = [sys.executable, "-m", "tools.cli"]


def _bench(args: list[str], out_dir) -> dict:
    proc = subprocess.run(DVD + args + ["--out-dir", str(out_dir), "--no-progress"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(next(out_dir.glob("*.json")).read_text())


def _assert_filled(value, where: str = "") -> None:
    """No null / NaN anywhere (NaN is written as null)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in ("error", "error_kind", "image_dir", "cuda") and not (where.endswith("slo") and item is None):
                _assert_filled(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_filled(item, f"{where}[{i}]")
    else:
        assert value is not None and not (isinstance(value, float) and math.isnan(value)), f"{where} is empty"


def _assert_point(point: dict, num_requests: int, output_tokens: int) -> None:
    s = point["summary"]
    assert s["completed"] == num_requests and s["failed"] == 0 and s["errors"] == {}
    assert s["request_throughput"] > 0 and s["output_throughput"] > 0 and s["goodput"] >= 0
    assert s["mean_output_tokens"] == output_tokens
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(s[metric]) == {"mean", "p50", "p90", "p99"} and s[metric]["p99"] >= s[metric]["p50"] > 0
    assert s["stage_ms"]["encode"]["mean"] > 0 and s["stage_ms"]["prefill"]["mean"] > 0
    assert s["stage_ms"]["decode"]["mean"] > 0
    for r in point["requests"]:
        assert r["ok"] and r["ttft_s"] > 0 and r["e2e_s"] >= r["ttft_s"] and r["output_tokens"] == output_tokens
        assert r["prompt_tokens"] > 0 and r["num_tiles"] >= 1 and set(r["stage_s"]) >= {"encode", "prefill", "decode"}
    _assert_filled(point)


def test_bench_serve_rest_concurrency_sweep(stacks, tiny_ckpt, tmp_path):
    stack = stacks(tiny_ckpt)
    data = _bench(["bench", "serve", "--base-url", stack.base_url, "--image-sizes", "448x448:1,896x896:1",
                   "--reuse-pct", "50", "--num-requests", "4", "--concurrency", "1,2", "--output-tokens", "4",
                   "--slo", "ttft:60000,tpot:60000", "--warmup", "1"], tmp_path)
    assert data["protocol"] == "rest" and data["target"] == stack.base_url
    assert data["options"]["workload"]["image_sizes"] == ["448x448:1 (1 tiles)", "896x896:1 (5 tiles)"]
    assert [(p["mode"], p["value"]) for p in data["points"]] == [("concurrency", 1), ("concurrency", 2)]
    for point in data["points"]:
        _assert_point(point, num_requests=4, output_tokens=4)
    _assert_filled({k: v for k, v in data.items() if k != "points"})
    assert (tmp_path / "serve.png").stat().st_size > 0 and (tmp_path / "serve.md").read_text().count("| 50% | concurrency") == 4


def test_bench_serve_grpc_poisson(stacks, tiny_ckpt, tmp_path):
    stack = stacks(tiny_ckpt)
    data = _bench(["bench", "serve", "--protocol", "grpc", "--grpc-target", stack.grpc_target, "--image-sizes",
                   "1344x1344", "--num-requests", "3", "--rate", "50", "--max-concurrency", "2", "--output-tokens",
                   "3", "--warmup", "0"], tmp_path)
    (point,) = data["points"]
    assert (point["mode"], point["value"]) == ("rate", 50)
    _assert_point(point, num_requests=3, output_tokens=3)
    assert point["summary"]["mean_tiles_per_request"] == 10
    assert (tmp_path / "serve.png").stat().st_size > 0


def test_bench_serve_refuses_a_remote_target(tmp_path):
    proc = subprocess.run(DVD + ["bench", "serve", "--base-url", "http://10.1.2.3:8000/v1", "--num-requests", "1",
                                 "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not a loopback address" in proc.stderr


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_cpus_pin_every_process_of_a_stack(stacks, tiny_ckpt):
    stack = stacks(tiny_ckpt, vision_cpus=(0,), language_cpus=(1,), gateway_cpus=(0,))
    allowed = {p.name: os.sched_getaffinity(p.popen.pid) for p in stack.procs}
    assert allowed == {"vision-0": {0}, "language-0": {1}, "gateway": {0}}


@pytest.mark.slow  # three stacks one after the other: ~45 s here
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_bench_compare_runs_every_deployment(tiny_ckpt, tmp_path):
    data = _bench(["bench", "compare", "--preset", str(tiny_ckpt), "--device", "cpu", "--image-sizes", "896x896",
                   "--num-requests", "2", "--concurrency", "2", "--output-tokens", "3", "--warmup", "1", "--rounds", "2"],
                  tmp_path)
    assert list(data["deployments"]) == ["colocated_language_cpus", "colocated_all_cpus", "disaggregated"]
    for deployment in data["deployments"].values():
        _assert_point(deployment["points"][0], num_requests=4, output_tokens=3)  # 2 rounds of 2, pooled
        assert len(deployment["other_cpu_per_round"]) == 2 and min(deployment["other_cpu_per_round"]) >= 0
        assert "load generator" in deployment["cpu_s_per_request"] and "gateway" in deployment["cpu_s_per_request"]
        assert all(seconds > 0 for seconds in deployment["cpu_s_per_request"].values())
    processes = {key: set(d["cpu_s_per_request"]) for key, d in data["deployments"].items()}
    assert "monolithic" in processes["colocated_language_cpus"]
    assert {"vision-0", "language-0"} <= processes["disaggregated"]
    assert [r["setting"] for r in data["ratios"]] == ["paper", "equal-cores"]
    assert all(r["request_throughput_ratio"] > 0 for r in data["ratios"])
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_threads_reach_every_model_process(stacks, tiny_ckpt):
    """Unpinned model processes run torch's default (one thread per core) unless the stack says
    `threads`; the services log the count they run with."""
    expected = torch.get_num_threads()
    stack = stacks(tiny_ckpt)
    for name in ("vision-0", "language-0"):
        log = (stack.opts.log_dir / f"{name}.log").read_text()
        assert f"{expected} torch threads" in log, log[-2000:]
    stack = stacks(tiny_ckpt, threads=3)
    for name in ("vision-0", "language-0"):
        log = (stack.opts.log_dir / f"{name}.log").read_text()
        assert "3 torch threads" in log, log[-2000:]
