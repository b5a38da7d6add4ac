"""`dvd bench engine`: aggregate decode throughput of the continuous-batching engine at several
concurrencies, side by side in one run on one loaded model.

Method: one language replica is loaded exactly as the service loads it (`LanguageCore.load`:
weights, tokenizer, KV arena, warm-up, engine thread). For each concurrency c, c requests with
distinct chat prompts of about `prompt_tokens` tokens are submitted to the engine at once,
greedy, `ignore_eos`, exactly `max_tokens` tokens each; this thread then sleeps until they
finish (no asyncio or gRPC in the loop: this measures the engine, not the serving stack).
Decode throughput = tokens generated after each request's first token, summed, divided by the
time from the moment every request has its first token to the moment the last one finishes
(prefill excluded). Each concurrency runs `repeats` times after a warm-up; medians are reported
with the ratio to the first concurrency. One extra run at concurrency 1 without the decode
batch padding (see `language_service/engine/runner.py`) shows what batch invariance costs a
single stream."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dvd.config import DeviceConfig, LanguageConfig
from dvd.types import Delta, Message, SamplingParams, TextPart
from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.sequence import Sequence

WORDS = "the lighthouse keeper watched ships cross the grey northern sea every night".split()


@dataclass(frozen=True)
class EngineBenchOptions:
    checkpoint: Path
    concurrency: tuple[int, ...] = (1, 4, 16)
    max_tokens: int = 128
    prompt_tokens: int = 64
    repeats: int = 3
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default


@dataclass(frozen=True)
class EngineBenchResult:
    device: str
    rates: dict[int, float]  # concurrency -> decode tokens/s (median)
    unpadded_single: float  # concurrency 1 without the batch-invariance padding


class _Tracker:
    """Times one request from the engine thread's deltas."""

    def __init__(self) -> None:
        self.first_s = 0.0
        self.num_tokens = 0
        self.error: Exception | None = None
        self.done = threading.Event()

    def on_delta(self, delta: Delta | Exception) -> None:
        if isinstance(delta, Exception):
            self.error = delta
            self.done.set()
            return
        self.first_s = self.first_s or time.perf_counter()
        self.num_tokens += len(delta.token_ids)
        if delta.finish_reason is not None:
            self.done.set()


def _submit(core, index: int, opts: EngineBenchOptions) -> _Tracker:
    words = " ".join(WORDS[(index + i) % len(WORDS)] for i in range(opts.prompt_tokens))
    prompt = core.prompts.build([Message(role="user", parts=(TextPart(f"Request {index}: {words}"),))], [])
    tracker = _Tracker()
    core.engine.submit(Sequence(
        request_id=f"bench-{index}-{time.monotonic_ns()}", prompt_ids=prompt.token_ids, image_features=None,
        sampling=SamplingParams(max_tokens=opts.max_tokens, ignore_eos=True), max_tokens=opts.max_tokens,
        detokenizer=IncrementalDetokenizer(core.tokenizer), emit=tracker.on_delta))
    return tracker


def _decode_rate(core, concurrency: int, opts: EngineBenchOptions) -> float:
    trackers = [_submit(core, i, opts) for i in range(concurrency)]
    for tracker in trackers:
        if not tracker.done.wait(timeout=3600):
            raise TimeoutError("benchmark request did not finish")
        if tracker.error is not None:
            raise RuntimeError(f"benchmark request failed: {tracker.error}")
    finished = time.perf_counter()
    all_started = max(t.first_s for t in trackers)
    return sum(t.num_tokens - 1 for t in trackers) / (finished - all_started)


def _median_rate(core, concurrency: int, opts: EngineBenchOptions) -> float:
    return statistics.median(_decode_rate(core, concurrency, opts) for _ in range(opts.repeats))


def run_engine_bench(opts: EngineBenchOptions) -> EngineBenchResult:
    import torch

    from language_service.core import LanguageCore

    if opts.threads:
        torch.set_num_threads(opts.threads)

    cfg = LanguageConfig(model=str(opts.checkpoint), device=DeviceConfig(device=opts.device, dtype=opts.dtype),
                         max_running_seqs=max(opts.concurrency), max_queue=max(opts.concurrency))
    core = LanguageCore(cfg, opts.checkpoint)
    core.load()
    try:
        _decode_rate(core, max(opts.concurrency), opts)  # warm-up: allocator, kernels, caches
        rates = {c: _median_rate(core, c, opts) for c in opts.concurrency}
        runner = core.engine.runner
        padded, runner.decode_row_multiple = runner.decode_row_multiple, 1
        unpadded = _median_rate(core, 1, opts)
        runner.decode_row_multiple = padded
    finally:
        core.stop()
    desc = f"{core.device_desc}, attention {core.attn_implementation}, {torch.get_num_threads()} torch threads"
    return EngineBenchResult(desc, rates, unpadded)


def format_table(result: EngineBenchResult, opts: EngineBenchOptions) -> str:
    base_c = opts.concurrency[0]
    base = result.rates[base_c]
    lines = [f"engine decode throughput: {opts.checkpoint.name}, {result.device}",
             f"about {opts.prompt_tokens}-token prompts, {opts.max_tokens} greedy tokens each, "
             f"median of {opts.repeats}", "",
             f"| concurrency | decode tokens/s | tokens/s per request | vs concurrency {base_c} |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {c} | {r:.1f} | {r / c:.1f} | {r / base:.2f}x |" for c, r in result.rates.items()]
    top = max(result.rates)
    lines += ["", f"concurrency 1 without batch-invariance padding: {result.unpadded_single:.1f} tokens/s "
              f"(concurrency {top} is {result.rates[top] / result.unpadded_single:.2f}x that)"]
    return "\n".join(lines)
