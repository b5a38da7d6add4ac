"""`dvd bench guided`: decode throughput of the engine with half the requests under a JSON
schema against none, side by side on one loaded model: what guided decoding costs a batch.

Method: one language replica is loaded as the service loads it (`LanguageCore.load`: weights,
tokenizer, grammar compiler, paged KV cache, warm-up, engine thread). Each arm submits
`concurrency` requests with distinct chat prompts (`dvd bench engine`'s) at once, greedy,
exactly `max_tokens` tokens each: in the constrained arm the first half follow `SCHEMA`
(matchers from the replica's grammar cache, as `LanguageCore.generate` makes them), whose
1000-character minimum string keeps every one of them decoding to max_tokens, so both arms
generate the same number of tokens; the rest, and every request of the free arm, run with
`ignore_eos`. Whole-run tokens/s as in `dvd bench engine`: new tokens / (last finish -
submission), prefill included. Arms alternate round by round after one warm-up round of each,
so drift on a shared machine lands on both; medians, ranges and the ratio are reported, and the
median of the per-round ratios (each round's two arms ran back to back)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from dvd.config import DeviceConfig, LanguageConfig
from dvd.types import GuidedDecoding, GuideKind, SamplingParams
from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.sequence import Sequence
from tools.bench.engine import _Tracker, bench_prompts

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["summary", "pages"],
          "properties": {"summary": {"type": "string", "minLength": 1000},
                         "pages": {"type": "integer", "minimum": 1, "maximum": 99}}}


@dataclass(frozen=True)
class GuidedBenchOptions:
    checkpoint: Path
    concurrency: int = 16
    max_tokens: int = 64
    prompt_tokens: int = 32
    rounds: int = 3
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default


@dataclass(frozen=True)
class GuidedBenchResult:
    device: str
    rates: dict[str, list[float]]  # arm -> whole-run tokens/s per round


def _submit(core, prompt: list[int], max_tokens: int, guided: GuidedDecoding | None) -> _Tracker:
    tracker = _Tracker()
    core.engine.submit(Sequence(
        request_id=f"guided-bench-{time.monotonic_ns()}", prompt_ids=prompt, image_features=None,
        sampling=SamplingParams(max_tokens=max_tokens, guided=guided, ignore_eos=guided is None),
        max_tokens=max_tokens, detokenizer=IncrementalDetokenizer(core.tokenizer), emit=tracker.on_delta,
        guide=core.grammars.guide(guided) if guided else None))
    return tracker


def _rate(core, prompts: list[list[int]], max_tokens: int, num_constrained: int) -> float:
    """Whole-run tokens/s with the first `num_constrained` prompts under SCHEMA."""
    guided = GuidedDecoding(GuideKind.JSON_SCHEMA, schema=json.dumps(SCHEMA))
    started = time.perf_counter()
    trackers = [_submit(core, p, max_tokens, guided if i < num_constrained else None) for i, p in enumerate(prompts)]
    for tracker in trackers:
        tracker.wait()
        if len(tracker.token_ids) != max_tokens:
            raise RuntimeError(f"a request made {len(tracker.token_ids)} tokens, not {max_tokens}: unequal arms")
    return sum(len(t.token_ids) for t in trackers) / (max(t.finished_s for t in trackers) - started)


def run_guided_bench(opts: GuidedBenchOptions) -> GuidedBenchResult:
    import torch

    from language_service.core import LanguageCore

    if opts.threads:
        torch.set_num_threads(opts.threads)
    cfg = LanguageConfig(model=str(opts.checkpoint), device=DeviceConfig(device=opts.device, dtype=opts.dtype),
                         max_running_seqs=opts.concurrency, max_queue=opts.concurrency)
    core = LanguageCore(cfg, opts.checkpoint)
    core.load()
    arms = {"none constrained": 0, "half constrained": opts.concurrency // 2}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    prompts = bench_prompts(core, opts.concurrency, opts.prompt_tokens)
    try:
        for round_index in range(opts.rounds + 1):  # round 0 warms up both arms
            for name, num_constrained in arms.items():
                rate = _rate(core, prompts, opts.max_tokens, num_constrained)
                if round_index:
                    rates[name].append(rate)
    finally:
        core.stop()
    desc = f"{core.device_desc}, attention {core.attn_implementation}, {torch.get_num_threads()} torch threads"
    return GuidedBenchResult(desc, rates)


def format_table(result: GuidedBenchResult, opts: GuidedBenchOptions) -> str:
    base = statistics.median(result.rates["none constrained"])
    lines = [f"guided decoding cost: {opts.checkpoint.name}, {result.device}",
             f"concurrency {opts.concurrency}, about {opts.prompt_tokens}-token prompts, {opts.max_tokens} greedy "
             f"tokens each, arms interleaved, median of {opts.rounds} rounds", "",
             "| arm | tokens/s (median) | range over rounds | vs none constrained |", "|---|---:|---:|---:|"]
    for name, rates in result.rates.items():
        median = statistics.median(rates)
        lines.append(f"| {name} | {median:.1f} | {min(rates):.1f}-{max(rates):.1f} | {median / base:.3f}x |")
    paired = [h / n for h, n in zip(result.rates["half constrained"], result.rates["none constrained"])]
    lines += ["", f"per-round ratio (half / none, each round's two arms back to back): median "
              f"{statistics.median(paired):.3f}x, range {min(paired):.3f}-{max(paired):.3f}x"]
    return "\n".join(lines)


def register(kinds) -> None:
    """Add `dvd bench guided` to the `dvd bench` sub-commands."""
    p = kinds.add_parser("guided", help="engine tokens/s with half the requests under a JSON schema vs none")
    p.add_argument("--preset", default="small", help="a preset or a checkpoint dir")
    p.add_argument("--checkpoint-root", default="checkpoints")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.set_defaults(func=main)


def main(a) -> int:
    from tools.checkpoint import ensure_checkpoint

    if min(a.concurrency, a.max_tokens, a.rounds) < 1:
        raise SystemExit("--concurrency, --max-tokens and --rounds must be positive")
    opts = GuidedBenchOptions(Path(ensure_checkpoint(a.preset, Path(a.checkpoint_root))), a.concurrency,
                              a.max_tokens, a.prompt_tokens, a.rounds, a.device, a.dtype, a.threads)
    print(format_table(run_guided_bench(opts), opts))
    return 0
