"""`scripts/gpu_check.sh` (python -m tools.bench.gpu_check): what a GPU machine runs once to
check the engine's GPU paths and record its numbers, in one JSON file.

1. Writes the `1b-shape` checkpoint (InternVL3-1B's exact tensor shapes, random init), and times
   one layer's decode attention per backend at 512 and 4096 keys per row (`paged_decode`: the
   gather path, the Triton paged kernel, flash-attn's), with each one's difference from gather.
2. Token-exact check: greedy tokens of the engine (each prompt alone, then all in one batch)
   against `InternVLForConditionalGeneration.generate` on the same checkpoint and dtype; reports
   the fraction of tokens that agree (bf16 is not bit-stable across kernels, so less than 1.0 is
   a finding to read, not a crash); again with the Triton paged decode where it runs.
3. Runs `dvd bench engine` in bf16 at concurrency 1/16/64 for every available attention backend
   (gather + sdpa, the Triton paged decode, gather + eager, and flash_attention_2 when flash-attn
   imports), each with and without CUDA graphs; transformers `generate` side by side on the first
   configuration only (it does not change with the engine's settings).

Results are written after every section and every bench run, so a run cut short keeps what it
measured; a section or bench run that raises is recorded as `{"error", "traceback"}` and the next
one runs (exit status 1 when any did). It imports nothing from the gateway (no fastapi/uvicorn),
nor redis, xgrammar, the gRPC server extras or the generated protobuf code (the GPU machine's
image has torch, transformers, grpcio and numpy, not the rest of the project's dependencies; the
CPU dry run checks it in a venv without them), and needs no network. `--device cpu --preset tiny`
is the dry path the CPU test suite runs."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
import transformers

from dvd.checkpoint import load_model_config
from dvd.devices import flash_attn_available
from language_service.engine.triton_decode import triton_available
from tools.bench import paged_decode
from tools.bench.engine import EngineBenchOptions, bench_prompts, load_core, run_engine_bench, submit


def backends(device: str) -> list[tuple[str, str]]:
    """(attn_implementation, decode_attention) pairs to run: gather + SDPA, on CUDA the Triton paged
    decode (Triton ships with CUDA torch), gather + eager, and flash-attn's paged decode when it
    imports. The order puts what a timeout would cost most first."""
    cuda = device.startswith("cuda")
    pairs = [("sdpa", "gather")] + ([("sdpa", "triton")] if cuda and triton_available() else [])
    return pairs + [("eager", "gather")] + ([("flash_attention_2", "auto")] if cuda and flash_attn_available() else [])


def bench_section(opts: EngineBenchOptions, device: str) -> Iterator[dict]:
    """One engine bench run per (backend, CUDA graphs or not), yielded as each finishes."""
    graph_modes = (True, False) if device.startswith("cuda") else (False,)
    for i, ((attention, decode), graphs) in enumerate((a, g) for a in backends(device) for g in graph_modes):
        run_opts = replace(opts, attention=attention, decode_attention=decode, cuda_graphs=graphs, baseline=i == 0,
                           poisson_requests=opts.poisson_requests if i == 0 else 0,
                           prefix_cache_conversations=opts.prefix_cache_conversations if i == 0 else 0)
        started = time.perf_counter()
        result = _guarded(lambda run_opts=run_opts: run_engine_bench(run_opts).as_dict())
        yield {"attention": attention, "decode_attention": decode, "cuda_graphs": graphs,
               "seconds": time.perf_counter() - started, **result}


def paged_decode_section(checkpoint: Path, a: argparse.Namespace) -> dict:
    """One layer's decode attention per backend (tools/bench/paged_decode.py) at the checkpoint's
    heads, at longer contexts than the engine bench's prompts."""
    text = load_model_config(checkpoint).text_config  # either layout
    heads, kv_heads = int(text.num_attention_heads), int(text.num_key_value_heads)
    dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    batches, keys = [int(b) for b in a.decode_batches.split(",")], [int(k) for k in a.decode_keys.split(",")]
    started = time.perf_counter()
    results = paged_decode.run(torch.device(a.device), getattr(torch, a.dtype), batches, keys, heads, kv_heads, dim)
    return {"heads": heads, "kv_heads": kv_heads, "head_dim": dim, "results": results,
            "seconds": time.perf_counter() - started}


def token_check(checkpoint: Path, device: str, dtype: str, num_prompts: int, max_tokens: int,
                decode_attention: str = "auto") -> dict:
    """Engine greedy tokens (solo and batched) vs InternVLForConditionalGeneration.generate."""
    from transformers import InternVLForConditionalGeneration

    opts = EngineBenchOptions(checkpoint=checkpoint, concurrency=(num_prompts,), device=device, dtype=dtype,
                              decode_attention=decode_attention)
    core = load_core(opts)
    prompts = bench_prompts(core, num_prompts, 48)
    try:
        solo = [_collect([submit(core, prompt, max_tokens)])[0] for prompt in prompts]
        batched = _collect([submit(core, prompt, max_tokens) for prompt in prompts])
    finally:
        core.stop()
    model = InternVLForConditionalGeneration.from_pretrained(checkpoint, dtype=next(core.model.parameters()).dtype)
    model = model.to(next(core.model.parameters()).device).eval()
    reference = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=model.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False)
            reference.append(out[0, len(prompt):].tolist())
    return {"num_prompts": num_prompts, "max_tokens": max_tokens, "dtype": str(model.dtype),
            "decode_attention": core.engine.runner.backend,
            "solo_agreement": _agreement(solo, reference), "batched_agreement": _agreement(batched, reference),
            "solo_exact_sequences": sum(a == b for a, b in zip(solo, reference)),
            "batched_exact_sequences": sum(a == b for a, b in zip(batched, reference))}


def _collect(trackers) -> list[list[int]]:
    for tracker in trackers:
        tracker.wait()
    return [tracker.token_ids for tracker in trackers]


def _agreement(outputs: list[list[int]], reference: list[list[int]]) -> float:
    """Fraction of reference tokens matched position by position (up to each first divergence)."""
    matched = 0
    for out, ref in zip(outputs, reference):
        matched += next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref)))
    return matched / max(1, sum(len(r) for r in reference))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--preset", default="1b-shape", help="a preset or a checkpoint dir")
    p.add_argument("--checkpoint-root", default="checkpoints")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=170)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--check-prompts", type=int, default=8)
    p.add_argument("--check-tokens", type=int, default=32)
    p.add_argument("--poisson-requests", type=int, default=16)
    p.add_argument("--decode-keys", default="512,4096", help="keys per row of the decode-attention kernel section")
    p.add_argument("--decode-batches", default="1,16,64")
    a = p.parse_args(argv)
    from tools.checkpoint import ensure_checkpoint

    out = Path(a.out)
    cuda_device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report: dict = {"tool": "scripts/gpu_check.sh", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "torch": torch.__version__, "transformers": transformers.__version__, "cuda_device": cuda_device,
                    "device": a.device, "dtype": a.dtype, "attention_backends": backends(a.device)}
    started = time.perf_counter()
    checkpoint = Path(ensure_checkpoint(a.preset, Path(a.checkpoint_root)))
    report["checkpoint"] = {"preset": a.preset, "path": str(checkpoint), "seconds": time.perf_counter() - started}
    _write(out, report)
    # Correctness and the kernel-level timings first: a run cut short by its timeout loses the
    # last engine bench runs, not the token checks. A section that raises is recorded as an error
    # and the next one runs: on a machine none of this has run on, one broken path must not cost
    # the rest of the check.
    report["paged_decode"] = _guarded(lambda: paged_decode_section(checkpoint, a))
    _write(out, report)
    report["token_check"] = _guarded(lambda: token_check(checkpoint, a.device, a.dtype, a.check_prompts,
                                                         a.check_tokens))
    _write(out, report)
    if ("sdpa", "triton") in backends(a.device):
        report["token_check_triton"] = _guarded(lambda: token_check(checkpoint, a.device, a.dtype, a.check_prompts,
                                                                    a.check_tokens, "triton"))
        _write(out, report)
    opts = EngineBenchOptions(checkpoint=checkpoint, concurrency=tuple(int(c) for c in a.concurrency.split(",")),
                              max_tokens=a.max_tokens, prompt_tokens=a.prompt_tokens, repeats=a.repeats,
                              device=a.device, dtype=a.dtype, poisson_requests=a.poisson_requests)
    report["engine_bench"] = []
    for run in bench_section(opts, a.device):
        report["engine_bench"].append(run)
        _write(out, report)
    report["fastapi_imported"] = any(m in sys.modules for m in ("fastapi", "uvicorn"))
    # The generated gRPC code needs protobuf >= 7.35, and a bare GPU machine's protobuf may be older.
    report["protos_imported"] = "protos" in sys.modules
    report["total_seconds"] = time.perf_counter() - started
    _write(out, report)
    print(json.dumps(report, indent=1))
    return 1 if _errors(report) else 0


def _guarded(section: Callable[[], dict]) -> dict:
    """The section's result, or what it raised (the message and the traceback's last lines)."""
    try:
        return section()
    except Exception as exc:  # noqa: BLE001 - recorded in the report; the next section runs
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}


def _errors(report: dict) -> list[str]:
    sections = [v for v in report.values() if isinstance(v, dict)] + list(report.get("engine_bench", []))
    return [s["error"] for s in sections if "error" in s]


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
