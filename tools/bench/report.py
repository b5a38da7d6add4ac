"""Results of `dvd bench serve` / `compare` as JSON (summaries + every request), a Markdown
table, and PNG plots (latency percentiles and throughput against load)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

from tools.bench.metrics import STAGES
from tools.bench.serve import PointResult, ServeOptions


def machine() -> dict:
    """What the numbers were measured on."""
    model = ""
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    import torch

    return {"cpu_model": model, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def options_dict(opts: ServeOptions) -> dict:
    out = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in ("workload", "slo")}
    out.update(workload=opts.workload.describe(), slo=opts.slo.as_dict())
    return json.loads(json.dumps(out, default=list))


def point_dict(point: PointResult, with_requests: bool = True) -> dict:
    out = {"reuse": point.reuse, "mode": point.mode, "value": point.value, "load_average": point.load_average,
           "summary": dataclasses.asdict(point.summary)}
    if with_requests:
        out["requests"] = [dataclasses.asdict(r) for r in point.records]
    return out


def serve_result(opts: ServeOptions, points: list[PointResult], extra: dict | None = None) -> dict:
    return {"tool": "dvd bench serve", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "target": opts.target, "protocol": opts.protocol, "options": options_dict(opts), **(extra or {}),
            "points": [point_dict(p) for p in points]}


def write_json(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # NaN (a statistic with no samples) is not JSON: write null.
    path.write_text(json.dumps(_finite(data), indent=1) + "\n")
    return path


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _f(value: float, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown_table(points: list[PointResult]) -> str:
    """Client-side metrics per point, then the server-side stage timings."""
    head = ("| reuse | load | ok/failed | req/s | out tok/s | goodput req/s | TTFT p50 / p90 / p99 ms | "
            "TPOT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms | errors |")
    lines = [head, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in points:
        s = p.summary
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "-"
        lines.append(
            f"| {p.reuse:.0%} | {p.mode} {p.value:g} | {s.completed}/{s.failed} | {_f(s.request_throughput, 3)} | "
            f"{_f(s.output_throughput)} | {_f(s.goodput, 3)} | {_f(s.ttft_ms['p50'], 0)} / {_f(s.ttft_ms['p90'], 0)} / "
            f"{_f(s.ttft_ms['p99'], 0)} | {_f(s.tpot_ms['p50'])} / {_f(s.tpot_ms['p99'])} | "
            f"{_f(s.itl_ms['p50'])} / {_f(s.itl_ms['p99'])} | {_f(s.e2e_ms['p50'], 0)} / {_f(s.e2e_ms['p99'], 0)} | "
            f"{errors} |")
    lines += ["", "Server-side stage timings (mean ms per request) and embedding-cache hits:", "",
              "| reuse | load | tiles/req | " + " | ".join(STAGES) + " | cache hits |",
              "|---:|---|---:|" + "---:|" * len(STAGES) + "---:|"]
    for p in points:
        s = p.summary
        stages = " | ".join(_f(s.stage_ms[stage]["mean"]) for stage in STAGES)
        lines.append(f"| {p.reuse:.0%} | {p.mode} {p.value:g} | {_f(s.mean_tiles_per_request)} | {stages} | "
                     f"{s.cache_hit_rate:.0%} |")
    return "\n".join(lines)


def plot(series: dict[str, list[PointResult]], path: Path, title: str) -> Path:
    """Two panels against load: TTFT/E2E percentiles, and request + output-token throughput.
    `series` maps a legend label (a deployment, or a reuse value) to its points."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'dvd-serve[bench]', or pass --no-plot") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.5))
    tok = thr.twinx()
    for i, (label, points) in enumerate(series.items()):
        xs, color = [p.value for p in points], f"C{i}"
        for metric, q, style in (("ttft_ms", "p50", "-o"), ("ttft_ms", "p99", ":o"),
                                 ("e2e_ms", "p50", "-s"), ("e2e_ms", "p99", ":s")):
            lat.plot(xs, [getattr(p.summary, metric)[q] for p in points], style, color=color,
                     label=f"{label} {metric[:-3].upper()} {q}")
        thr.plot(xs, [p.summary.request_throughput for p in points], "-o", color=color, label=f"{label} req/s")
        tok.plot(xs, [p.summary.output_throughput for p in points], "--^", color=color, alpha=0.6,
                 label=f"{label} out tok/s")
    mode = next(iter(series.values()))[0].mode if series else "load"
    lat.set(xlabel=mode, ylabel="latency (ms)", title="latency percentiles")
    thr.set(xlabel=mode, ylabel="requests / s", title="throughput")
    tok.set_ylabel("output tokens / s")
    lat.legend(fontsize=7)
    handles = thr.get_legend_handles_labels()[0] + tok.get_legend_handles_labels()[0]
    thr.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
    for axis in (lat, thr):
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def by_reuse(points: list[PointResult]) -> dict[str, list[PointResult]]:
    series: dict[str, list[PointResult]] = {}
    for p in points:
        series.setdefault(f"reuse {p.reuse:.0%}", []).append(p)
    return series
