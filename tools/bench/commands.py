"""The command-line side of `dvd bench serve`, `dvd bench compare` and `dvd plan`: flags ->
option dataclasses -> run -> results written as JSON, Markdown and PNG under --out-dir."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from tools.bench import report


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument("--image-sizes", default="896x896",
                   help="WxH or a weighted mix W1xH1:weight,W2xH2:weight (448x448: 1 tile, 896x896: 5, 1344x1344: 10)")
    w.add_argument("--images-per-request", type=int, default=1)
    w.add_argument("--reuse-pct", default="0", help="image-reuse ratio in %% (0-100); a comma list sweeps it")
    w.add_argument("--image-dir", default="", help="real images from this folder instead of synthetic ones")
    w.add_argument("--prompt-words", type=int, default=32, help="text prompt length in words (about as many tokens)")
    w.add_argument("--output-tokens", type=int, default=64, help="tokens per reply (exact: ignore_eos)")
    w.add_argument("--seed", type=int, default=0)
    load = p.add_argument_group("load")
    load.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    load.add_argument("--model", default="internvl", help="the model id sent in requests")
    load.add_argument("--concurrency", default="4", help="concurrent clients; a comma list sweeps it")
    load.add_argument("--rate", default="", help="Poisson arrivals in requests/s instead; a comma list sweeps it")
    load.add_argument("--max-concurrency", type=int, default=0, help="cap on in-flight requests with --rate")
    load.add_argument("--num-requests", type=int, default=32, help="requests per sweep point")
    load.add_argument("--max-duration-s", type=float, default=300.0, help="per sweep point: no request sent after it")
    load.add_argument("--warmup", type=int, default=2, help="unmeasured requests before the first point")
    load.add_argument("--request-timeout-s", type=float, default=600.0)
    load.add_argument("--slo", default="", help="goodput objectives in ms, e.g. ttft:2000,tpot:100 (also e2e:MS)")
    out = p.add_argument_group("output")
    out.add_argument("--out-dir", default="", help="default: bench-results/<command>-<timestamp>")
    out.add_argument("--no-plot", action="store_true")
    out.add_argument("--no-progress", action="store_true")


def _serve_options(a: argparse.Namespace, **targets):
    from tools.bench.metrics import Slo
    from tools.bench.serve import ServeOptions
    from tools.bench.workload import WorkloadSpec, parse_sizes

    reuse = tuple(r / 100 for r in _floats(a.reuse_pct)) or (0.0,)
    workload = WorkloadSpec(image_sizes=parse_sizes(a.image_sizes), images_per_request=a.images_per_request,
                            reuse=reuse[0], prompt_words=a.prompt_words, output_tokens=a.output_tokens,
                            image_dir=Path(a.image_dir) if a.image_dir else None, seed=a.seed)
    return ServeOptions(
        workload=workload, protocol=a.protocol, model=a.model,
        concurrency=tuple(int(c) for c in _floats(a.concurrency)) or (1,), rates=_floats(a.rate),
        max_concurrency=a.max_concurrency, reuse_sweep=reuse if len(reuse) > 1 else (),
        num_requests=a.num_requests, max_duration_s=a.max_duration_s, warmup=a.warmup,
        request_timeout_s=a.request_timeout_s, slo=Slo.parse(a.slo), progress=not a.no_progress, **targets)


def _quiet() -> None:
    """One INFO line per request from httpx (and font-cache notes) would bury the progress bar."""
    for name in ("httpx", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _out_dir(a: argparse.Namespace, command: str) -> Path:
    return Path(a.out_dir or f"bench-results/{command}-{time.strftime('%Y%m%d-%H%M%S')}")


def cmd_serve(a: argparse.Namespace) -> int:
    from tools.bench.serve import run_sweep

    _quiet()
    opts = _serve_options(a, base_url=a.base_url, grpc_target=a.grpc_target, allow_remote=a.allow_remote)
    points = asyncio.run(run_sweep(opts))
    out = _out_dir(a, "serve")
    table = report.markdown_table(points)
    report.write_json(report.serve_result(opts, points), out / "serve.json")
    (out / "serve.md").write_text(f"`dvd bench serve` against {opts.target} ({opts.protocol})\n\n{table}\n")
    if not a.no_plot:
        report.plot(report.by_reuse(points), out / "serve.png", f"dvd bench serve: {opts.target}")
    print(f"\n{table}\n\nresults: {out}/serve.json, serve.md" + ("" if a.no_plot else ", serve.png"))
    return 0 if all(p.summary.completed for p in points) else 1


def cmd_compare(a: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so every stack this command started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from dvd.flags import parse_cpus
    from tools.bench.compare import CompareOptions, deployments, ratio_table, ratios, run_compare
    from tools.checkpoint import ensure_checkpoint

    _quiet()
    out = _out_dir(a, "compare")
    checkpoint = ensure_checkpoint(a.preset, Path(a.checkpoint_root))
    opts = CompareOptions(checkpoint=Path(checkpoint), serve=_serve_options(a), settings=tuple(a.setting.split(",")),
                          vision_cpus=parse_cpus(a.vision_cpus), language_cpus=parse_cpus(a.language_cpus),
                          device=a.device, dtype=a.dtype, log_dir=out / "logs", rounds=a.rounds)
    run = run_compare(opts)
    results = run.points
    rows = ratios(results)
    labels = {d.key: d.label for d in deployments(opts)}
    data = {"tool": "dvd bench compare", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": report.machine(), "checkpoint": str(checkpoint), "options": report.options_dict(opts.serve),
            "deployments": {key: {"label": labels[key], "other_cpu_per_round": run.other_cpu[key],
                                  "cpu_s_per_request": run.cpu_per_request[key],
                                  "points": [report.point_dict(p) for p in points]}
                            for key, points in results.items()},
            "ratios": rows}
    report.write_json(data, out / "compare.json")
    sections = [f"### {labels[key]}\n\nOther processes' CPU use while it ran, per round: "
                f"{', '.join(f'{c:.2f}' for c in run.other_cpu[key])} CPU-s/s (0: the machine was ours; "
                f"{os.cpu_count()} CPUs in all).\nCPU-s per request by process: "
                f"{', '.join(f'{name} {sec:.3f}' for name, sec in run.cpu_per_request[key].items())}."
                f"\n\n{report.markdown_table(points)}"
                for key, points in results.items()]
    text = f"{ratio_table(rows)}\n\n" + "\n\n".join(sections)
    (out / "compare.md").write_text(f"`dvd bench compare` on {checkpoint}\n\n{text}\n")
    if not a.no_plot:
        series = {labels[k]: points for k, points in results.items()}
        report.plot(series, out / "compare.png", f"dvd bench compare: {Path(str(checkpoint)).name}")
    print(f"\n{text}\n\nresults: {out}/compare.json, compare.md" + ("" if a.no_plot else ", compare.png"))
    return 0


def register_bench(kinds) -> None:
    """Add `dvd bench serve` and `dvd bench compare` to the `dvd bench` sub-commands."""
    sv = kinds.add_parser("serve", help="load generator against a running gateway (REST or gRPC)")
    sv.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the gateway's OpenAI REST base URL")
    sv.add_argument("--grpc-target", default="127.0.0.1:50050", help="the gateway's gRPC host:port")
    sv.add_argument("--allow-remote", action="store_true", help="allow a target that is not a loopback address")
    _add_workload_args(sv)
    sv.set_defaults(func=cmd_serve)
    cp = kinds.add_parser("compare", help="the same workload against colocated and disaggregated stacks, with ratios")
    cp.add_argument("--preset", default="small", help="a preset (tiny, small, 1b-shape) or a checkpoint dir")
    cp.add_argument("--checkpoint-root", default="checkpoints")
    cp.add_argument("--setting", default="paper,equal-cores",
                    help="paper: language CPUs equal, vision on its own; equal-cores: same total CPUs")
    cp.add_argument("--vision-cpus", default="0", help="CPUs of the disaggregated vision process (and the front end)")
    cp.add_argument("--language-cpus", default="1", help="CPUs of the language process (and the colocated one)")
    cp.add_argument("--rounds", type=int, default=1,
                    help="alternate the deployments this many times (fresh images each round), pooled per deployment")
    cp.add_argument("--device", default="auto")
    cp.add_argument("--dtype", default="auto")
    _add_workload_args(cp)
    cp.set_defaults(func=cmd_compare, concurrency="8")


def register_plan(sub) -> None:
    """Add the top-level `dvd plan`."""
    p = sub.add_parser("plan", help="vision:language replica counts for a target load, from measured stage rates")
    p.add_argument("--vision-tiles-per-s", type=float, required=True, help="one vision replica, under load")
    p.add_argument("--prefill-tokens-per-s", type=float, required=True, help="one language replica")
    p.add_argument("--decode-tokens-per-s", type=float, required=True, help="one language replica, batched")
    p.add_argument("--target-rps", default="1", help="target requests/s; a comma list gives one row each")
    p.add_argument("--tiles", default="5", help="tiles per image, or a mix 1:0.3,5:0.5,10:0.2 (tiles:weight)")
    p.add_argument("--images-per-request", type=float, default=1.0)
    p.add_argument("--reuse-pct", type=float, default=0.0, help="images served from the embedding cache, %%")
    p.add_argument("--prompt-tokens", type=int, default=64, help="text tokens per prompt")
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--tokens-per-tile", type=int, default=256, help="256; 64 for ViR-compressed tiles")
    p.add_argument("--utilization", type=float, default=0.8, help="cap on each pool's busy fraction")
    p.add_argument("--preprocess-ms-per-tile", type=float, default=0.0,
                   help="CPU ms per tile of one preprocessing worker (`dvd bench vision`, CPU work per tile: "
                        "the hand-off row for a CUDA replica resizing on its device, the uint8 row otherwise): "
                        "also print the preprocessing cores a vision replica needs")
    p.add_argument("--vit-ms-per-tile", type=float, default=0.0,
                   help="with --preprocess-ms-per-tile: the replica's ViT ms per tile (default: 1000 / "
                        "--vision-tiles-per-s; 1.8 is an H100-class InternViT-300M)")
    p.add_argument("--preprocess-scaling", type=float, default=1.0,
                   help="rate each added worker brings, as a fraction of one (`dvd bench vision` worker scaling)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plan)


def cmd_plan(a: argparse.Namespace) -> int:
    import dataclasses

    from tools.bench.plan import Mix, StageRates, format_plans, plan, preprocess_cores

    rates = StageRates(a.vision_tiles_per_s, a.prefill_tokens_per_s, a.decode_tokens_per_s)
    mix = Mix(Mix.parse_tiles(a.tiles), a.images_per_request, a.reuse_pct / 100, a.prompt_tokens, a.output_tokens,
              a.tokens_per_tile)
    plans = [plan(rates, mix, rps, a.utilization) for rps in _floats(a.target_rps)]
    vit_ms = a.vit_ms_per_tile or 1000 / a.vision_tiles_per_s
    cores = preprocess_cores(vit_ms, a.preprocess_ms_per_tile, a.preprocess_scaling) if a.preprocess_ms_per_tile else None
    if a.json:
        print(json.dumps({"rates": dataclasses.asdict(rates), "mix": dataclasses.asdict(mix),
                          "plans": [dataclasses.asdict(p) | {"ratio": p.ratio} for p in plans],
                          "preprocess_cores_per_vision_replica": cores}, indent=1))
    else:
        print(format_plans(plans, rates, mix))
        if cores is not None:
            print(f"\npreprocessing: {cores:.1f} CPU cores per vision replica ({vit_ms:g} ms ViT per tile, "
                  f"{a.preprocess_ms_per_tile:g} ms CPU per tile, {a.preprocess_scaling:.0%} per added worker)")
    return 0
