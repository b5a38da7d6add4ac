"""`dvd bench engine`: aggregate decode throughput of the continuous-batching engine at several
concurrencies, side by side in one run on one loaded model.

Method: one language replica's core (`LanguageCore`: tokenizer, chat template, engine thread,
asyncio bridge; no gRPC) is loaded once. For each concurrency c, c requests with distinct text
prompts of about `prompt_tokens` tokens are started at once, greedy, `ignore_eos`, exactly
`max_tokens` tokens each. Decode throughput = tokens generated after each request's first token,
summed, divided by the time from the moment every request has its first token to the moment the
last one finishes (prefill excluded). Each concurrency is run `repeats` times after a warm-up
and the median is reported, with the ratio to concurrency 1."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from dvd.config import DeviceConfig, LanguageConfig
from dvd.types import Message, SamplingParams, TextPart

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


@dataclass(frozen=True)
class EngineBenchRow:
    concurrency: int
    decode_tokens_per_s: float
    per_request_tokens_per_s: float
    ratio_vs_first: float


def _prompt(index: int, num_tokens: int) -> list[Message]:
    words = [WORDS[(index + i) % len(WORDS)] for i in range(num_tokens)]
    return [Message(role="user", parts=(TextPart(f"Request {index}: " + " ".join(words)),))]


async def _one(core, index: int, opts: EngineBenchOptions) -> tuple[float, float, int]:
    """(first-token time, finish time, tokens) of one request."""
    sampling = SamplingParams(max_tokens=opts.max_tokens, ignore_eos=True)
    first, tokens = 0.0, 0
    async for delta in core.generate(f"bench-{index}-{time.monotonic_ns()}", _prompt(index, opts.prompt_tokens),
                                     [], sampling):
        tokens += len(delta.token_ids)
        first = first or time.perf_counter()
    return first, time.perf_counter(), tokens


async def _decode_rate(core, concurrency: int, opts: EngineBenchOptions) -> float:
    results = await asyncio.gather(*(_one(core, i, opts) for i in range(concurrency)))
    all_started = max(first for first, _, _ in results)
    done = max(end for _, end, _ in results)
    decode_tokens = sum(tokens - 1 for _, _, tokens in results)
    return decode_tokens / (done - all_started)


async def _measure(core, opts: EngineBenchOptions) -> dict[int, float]:
    await _decode_rate(core, max(opts.concurrency), opts)  # warm-up: allocator, kernels, caches
    return {c: statistics.median([await _decode_rate(core, c, opts) for _ in range(opts.repeats)])
            for c in opts.concurrency}


def run_engine_bench(opts: EngineBenchOptions) -> tuple[list[EngineBenchRow], str]:
    """Returns the rows and a description of the device the model ran on."""
    from language_service.core import LanguageCore

    cfg = LanguageConfig(model=str(opts.checkpoint), device=DeviceConfig(device=opts.device, dtype=opts.dtype),
                         max_running_seqs=max(opts.concurrency), max_queue=max(opts.concurrency),
                         default_max_tokens=opts.max_tokens)
    core = LanguageCore(cfg, opts.checkpoint)
    core.load()
    try:
        rates = asyncio.run(_measure(core, opts))
    finally:
        core.stop()
    base = rates[opts.concurrency[0]]
    rows = [EngineBenchRow(c, r, r / c, r / base) for c, r in rates.items()]
    return rows, f"{core.device_desc}, attention {core.attn_implementation}"


def format_table(rows: list[EngineBenchRow], opts: EngineBenchOptions, device: str) -> str:
    base = rows[0].concurrency
    lines = [f"engine decode throughput: {opts.checkpoint.name}, {device}",
             f"{opts.prompt_tokens}-token prompts, {opts.max_tokens} greedy tokens each, median of {opts.repeats}",
             "", f"| concurrency | decode tokens/s | tokens/s per request | vs concurrency {base} |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r.concurrency} | {r.decode_tokens_per_s:.1f} | {r.per_request_tokens_per_s:.1f} | "
              f"{r.ratio_vs_first:.2f}x |" for r in rows]
    return "\n".join(lines)
