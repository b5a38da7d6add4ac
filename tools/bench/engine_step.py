"""`python -m tools.bench.engine_step`: where a decode step's time goes, per batch size.

For each batch size B, in one process on the same weights: (1) the decoder's matmuls alone, the
checkpoint's own Linear modules (every layer's q/k/v/o and MLP projections, and lm_head) on
random [B, 1, hidden] inputs, nothing else; (2) the engine's full decode step with B rows (all
prefilled, decode only: embedding, the decoder layers, paged attention, sampling), timed around
`ModelRunner.run` while B requests decode, once with the fused decoder layers (the default) and
once with transformers' stock layers (B = 1 runs the stock layers either way). The gap is the
engine's cost beyond the GEMMs; the paged attention calls (gather + kernel, `BatchedPlan`) are
timed within the default step. The matmuls' growth with B says whether a step is bound by per-call
overhead (flat) or by compute (proportional to B), which bounds what batching can buy. Median
milliseconds."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from language_service.engine.attention import BatchedPlan
from tools.bench.engine import EngineBenchOptions, bench_prompts, load_core, submit


def matmuls_ms(forward, batch: int, iters: int) -> float:
    """Median ms of one pass over every decoder Linear and lm_head (`DecoderForward`'s) at `batch` rows."""
    linears = [m for layer in forward.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    linears.append(forward.lm_head)
    weight = forward.lm_head.weight
    inputs = {n: torch.randn(batch, 1, n, dtype=weight.dtype, device=weight.device) for n in {m.in_features for m in linears}}
    samples = []
    with torch.inference_mode():
        for _ in range(iters + 3):
            started = time.perf_counter()
            for m in linears:
                m(inputs[m.in_features])
            if weight.is_cuda:
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples[3:]) * 1e3


def engine_step_ms(core, prompts: list[list[int]], batch: int, tokens: int) -> tuple[float, float]:
    """Median ms of the engine's decode-only steps with exactly `batch` rows, and of the paged
    attention calls (KV gather + kernel, every layer) within them."""
    runner, steps, attention = core.engine.runner, [], [0.0]
    run, attends = runner.run, {name: getattr(BatchedPlan, name) for name in ("attend", "attend_flat")}

    def timer(attend):  # the stock layers call `attend`, the fused ones `attend_flat`
        def timed_attention(*args, **kwargs):
            started = time.perf_counter()
            out = attend(*args, **kwargs)
            attention[-1] += time.perf_counter() - started
            return out
        return timed_attention

    def timed(step_batch):
        started, attention[-1] = time.perf_counter(), 0.0
        out = run(step_batch)
        if not step_batch.prefill and len(step_batch.decode) == batch:
            steps.append(time.perf_counter() - started)
            attention.append(0.0)
        return out

    runner.run = timed
    for name, attend in attends.items():
        setattr(BatchedPlan, name, timer(attend))
    try:
        for tracker in [submit(core, p, tokens) for p in prompts[:batch]]:
            tracker.wait()
    finally:
        del runner.run  # back to the class's method
        for name, attend in attends.items():
            setattr(BatchedPlan, name, attend)
    return statistics.median(steps) * 1e3, statistics.median(attention[:-1]) * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.bench.engine_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/small")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    p.add_argument("--prompt-tokens", type=int, default=170)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    core = load_core(EngineBenchOptions(checkpoint=Path(a.checkpoint), concurrency=(max(batches),), threads=a.threads))
    try:
        prompts = bench_prompts(core, max(batches), a.prompt_tokens)
        engine_step_ms(core, prompts, max(batches), 8)  # warm-up
        print(f"decode step, {Path(a.checkpoint).name}, {core.device_desc}, {torch.get_num_threads()} threads, "
              f"~{a.prompt_tokens}-token prompts, median ms")
        print("| batch | decoder matmuls alone | per row | engine decode step | per row | of which paged attention "
              "| same step, stock layers | per row |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        forward = core.engine.runner.forward
        for b in batches:
            mm = matmuls_ms(forward, b, 50)
            step, attention = engine_step_ms(core, prompts, b, a.tokens)
            forward.use_fused = False
            stock, _ = engine_step_ms(core, prompts, b, a.tokens)
            forward.use_fused = forward.fused_layers is not None
            print(f"| {b} | {mm:.2f} | {mm / b:.3f} | {step:.2f} | {step / b:.3f} | {attention:.2f} | {stock:.2f} | "
                  f"{stock / b:.3f} |")
    finally:
        core.stop()


if __name__ == "__main__":
    main()
