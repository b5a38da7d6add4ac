"""`dvd bench engine`: the language engine against transformers' batched `generate`, side by
side in one run on the same weights and threads, plus Poisson arrivals against a static-batch
server and the KV capacity of paging.

Method. One language replica is loaded exactly as the service loads it (`LanguageCore.load`:
weights, tokenizer, paged KV cache, warm-up, engine thread); a second copy of the same weights
(transformers' own sdpa attention) serves the baselines (`engine_baseline.py`). Prompts are
distinct chat prompts of about `prompt_tokens` tokens; every request is greedy with exactly
`max_tokens` new tokens (`ignore_eos`; `min_new_tokens` for `generate`).

1. Concurrency c: c requests submitted to the engine at once (no asyncio or gRPC: this measures
   the engine), and the same c prompts as one left-padded `generate` batch. Whole-run tokens/s =
   new tokens / (last finish - submission), prefill included. Engine and baseline alternate,
   `repeats` times after a warm-up of each; reported: median tokens/s and the median of the
   paired ratios (each engine run over the generate run right after it). Also per CPU-second of
   the process (`time.process_time`): on a shared machine the wall clock also counts the time
   other processes held the CPU, the CPU clock only the work done (CPU only: GPU work is async).
   With `layers="both"` (the default) each repeat runs the engine twice, with the fused decoder
   layers and with transformers' stock ones (`DecoderForward.use_fused`, same replica, same
   weights; which goes first alternates per repeat, so neither always follows a generate run),
   then generate: both engine variants are paired with the same generate run.
2. Poisson: `poisson_requests` requests at `poisson_rate`/s (0: the engine's measured request
   rate at the top concurrency, a load both servers see as busy) to the engine and to the
   static-batch server, same arrival times. Tokens/s over the makespan (first arrival to last
   finish), and mean latency (arrival to last token). Twice: every request `max_tokens` long
   ("fixed"), and lengths uniform around the same mean (`mixed_lengths`, "mixed": requests that
   stop at different points; the static server runs each batch to its longest).
   The engine runs with the fused decoder layers (`layers="fused"`, the service's default).
3. KV capacity (`kv_capacity.py`, no model): sequences running at once at a fixed KV budget,
   2048 max_tokens but 64 actual output tokens, paged vs worst-case reservation.
4. Prefix cache (`prefix_cache.py`): the second turn of `prefix_cache_conversations` chats, the
   engine's prefix cache on vs off.

Sections 1 and 2 run with the prefix cache off: every repeat sends the same prompts, which a
cache would serve from the previous repeat, and neither baseline has one."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dvd.config import DeviceConfig, LanguageConfig
from dvd.types import Delta, Message, SamplingParams, TextPart
from language_service.detokenizer import IncrementalDetokenizer
from language_service.engine.sequence import Sequence
from tools.bench.engine_baseline import StaticBatchServer, generate_batch, mixed_lengths, poisson_arrivals
from tools.bench.kv_capacity import KvCapacity, kv_capacity

WORDS = "the lighthouse keeper watched ships cross the grey northern sea every night".split()


@dataclass(frozen=True)
class EngineBenchOptions:
    checkpoint: Path
    concurrency: tuple[int, ...] = (1, 16, 64)
    max_tokens: int = 128
    prompt_tokens: int = 170
    repeats: int = 3
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"  # DeviceConfig.attn_implementation: auto | sdpa | eager | flash_attention_2
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    cuda_graphs: bool = True
    decode_attention: str = "auto"  # LanguageConfig.decode_attention: auto | gather | triton
    batch_invariant: bool = False
    layers: str = "both"  # engine decoder layers: fused | stock | both (fused and stock alternating)
    baseline: bool = True  # measure transformers generate side by side
    poisson_requests: int = 48  # 0: skip the Poisson comparison
    poisson_rate: float = 0.0
    kv_budget_tokens: int = 65536
    prefix_cache_conversations: int = 16  # 0: skip the prefix-cache section
    prefix_cache_reply_tokens: int = 32


@dataclass(frozen=True)
class Run:
    """One measured run: new tokens, wall seconds, process CPU seconds."""

    num_tokens: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.num_tokens / self.wall_s

    @property
    def cpu_rate(self) -> float:
        return self.num_tokens / max(self.cpu_s, 1e-9)


@dataclass
class EngineBenchResult:
    device: str
    engine_runs: dict[int, list[Run]] = field(default_factory=dict)  # concurrency -> runs, in order
    generate_runs: dict[int, list[Run]] = field(default_factory=dict)  # paired with engine_runs
    stock_runs: dict[int, list[Run]] = field(default_factory=dict)  # layers="both": the stock-layer engine
    poisson: dict = field(default_factory=dict)
    prefix_cache: object = None  # prefix_cache.PrefixCacheResult
    kv: KvCapacity | None = None

    @property
    def engine(self) -> dict[int, float]:
        """Concurrency -> median whole-run tokens/s."""
        return {c: statistics.median(r.rate for r in runs) for c, runs in self.engine_runs.items()}

    @property
    def generate(self) -> dict[int, float]:
        return {c: statistics.median(r.rate for r in runs) for c, runs in self.generate_runs.items()}

    def ratios(self, cpu: bool = False, runs: dict[int, list[Run]] | None = None,
               over: dict[int, list[Run]] | None = None) -> dict[int, float]:
        """Concurrency -> median of the paired per-repeat ratios (wall or CPU clock): `runs`
        (default the engine's) over `over` (default generate's)."""
        return {c: statistics.median(ratios) for c, ratios in self.paired(cpu, runs, over).items()}

    def paired(self, cpu: bool = False, runs: dict[int, list[Run]] | None = None,
               over: dict[int, list[Run]] | None = None) -> dict[int, list[float]]:
        """Concurrency -> the per-repeat ratios, in run order."""
        pick = (lambda r: r.cpu_rate) if cpu else (lambda r: r.rate)
        runs, over = runs if runs is not None else self.engine_runs, over if over is not None else self.generate_runs
        return {c: [pick(a) / pick(b) for a, b in zip(rs, over[c])] for c, rs in runs.items() if over.get(c)}

    def as_dict(self) -> dict:
        return {"device": self.device, "engine_tokens_per_s": self.engine, "generate_tokens_per_s": self.generate,
                "engine_over_generate": self.ratios(), "engine_over_generate_cpu": self.ratios(cpu=True),
                "engine_runs": {c: [asdict(r) for r in v] for c, v in self.engine_runs.items()},
                "generate_runs": {c: [asdict(r) for r in v] for c, v in self.generate_runs.items()},
                "stock_layer_runs": {c: [asdict(r) for r in v] for c, v in self.stock_runs.items()},
                "poisson": self.poisson, "kv_capacity": asdict(self.kv) if self.kv else None,
                "prefix_cache": asdict(self.prefix_cache) if self.prefix_cache else None}


class _Tracker:
    """Collects one request's tokens from the engine thread's deltas."""

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.first_s = 0.0  # perf_counter at the first streamed token
        self.finished_s = 0.0
        self.error: Exception | None = None
        self.done = threading.Event()

    def on_delta(self, delta: Delta | Exception) -> None:
        if isinstance(delta, Exception):
            self.error = delta
        else:
            self.token_ids += delta.token_ids
            self.first_s = self.first_s or (time.perf_counter() if delta.token_ids else 0.0)
            if delta.finish_reason is None:
                return
        self.finished_s = time.perf_counter()
        self.done.set()

    def wait(self) -> None:
        if not self.done.wait(timeout=3600) or self.error is not None:
            raise RuntimeError(f"benchmark request failed: {self.error or 'timed out'}")


def bench_prompts(core, count: int, prompt_tokens: int) -> list[list[int]]:
    """`count` distinct chat prompts of at least `prompt_tokens` tokens."""
    prompts = []
    for index in range(count):
        words: list[str] = []
        ids: list[int] = []
        while len(ids) < prompt_tokens:
            words += [WORDS[(index + len(words)) % len(WORDS)] for _ in range(8)]
            message = Message(role="user", parts=(TextPart(f"Request {index}: {' '.join(words)}"),))
            ids = core.prompts.build([message], []).token_ids
        prompts.append(ids)
    return prompts


def submit(core, prompt: list[int], max_tokens: int) -> _Tracker:
    tracker = _Tracker()
    core.engine.submit(Sequence(
        request_id=f"bench-{time.monotonic_ns()}", prompt_ids=prompt, image_features=None,
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=True), max_tokens=max_tokens,
        detokenizer=IncrementalDetokenizer(core.tokenizer), emit=tracker.on_delta))
    return tracker


def engine_run(core, prompts: list[list[int]], max_tokens: int) -> Run:
    """The engine with every prompt submitted at once."""
    started, cpu = time.perf_counter(), time.process_time()
    trackers = [submit(core, p, max_tokens) for p in prompts]
    for tracker in trackers:
        tracker.wait()
    return Run(sum(len(t.token_ids) for t in trackers), max(t.finished_s for t in trackers) - started,
               time.process_time() - cpu)


def generate_run(model, prompts: list[list[int]], max_tokens: int, pad_id: int) -> Run:
    started, cpu = time.perf_counter(), time.process_time()
    num_tokens = generate_batch(model, prompts, max_tokens, pad_id)
    return Run(num_tokens, time.perf_counter() - started, time.process_time() - cpu)


def engine_poisson(core, prompts: list[list[int]], arrivals: list[float], lengths: list[int]
                   ) -> tuple[float, list[float]]:
    """(makespan s, per-request latency s) of the engine under the arrival schedule."""
    start = time.perf_counter()
    trackers = []
    for prompt, at, length in zip(prompts, arrivals, lengths):
        time.sleep(max(0.0, at - (time.perf_counter() - start)))
        trackers.append(submit(core, prompt, length))
    for tracker in trackers:
        tracker.wait()
    return max(t.finished_s for t in trackers) - start, [t.finished_s - start - at for t, at in zip(trackers, arrivals)]


def load_core(opts: EngineBenchOptions):
    from language_service.core import LanguageCore

    top = max(opts.concurrency)
    cfg = LanguageConfig(model=str(opts.checkpoint), device=DeviceConfig(opts.device, opts.dtype, opts.attention),
                         max_running_seqs=top, max_queue=max(top, opts.poisson_requests, opts.prefix_cache_conversations),
                         max_kv_tokens=max(65536, top * (opts.prompt_tokens + opts.max_tokens) * 2),
                         cuda_graphs=opts.cuda_graphs, batch_invariant=opts.batch_invariant,
                         decode_attention=opts.decode_attention,
                         prefix_caching=False)  # sections 1-2; section 4 turns it on by itself
    core = LanguageCore(cfg, opts.checkpoint)
    core.load()
    return core


def run_engine_bench(opts: EngineBenchOptions) -> EngineBenchResult:
    import torch

    from language_service.model import build_language_model

    if opts.threads:
        torch.set_num_threads(opts.threads)
    core = load_core(opts)
    param = next(core.model.parameters())
    reference = build_language_model(opts.checkpoint, dtype=param.dtype, device=param.device) if opts.baseline else None
    pad_id = core.tokenizer.pad_token_id if core.tokenizer.pad_token_id is not None else 0
    prompts = bench_prompts(core, max(max(opts.concurrency), opts.poisson_requests), opts.prompt_tokens)
    runner = core.engine.runner
    result = EngineBenchResult(f"{core.device_desc}, engine attention {runner.backend}"
                               f"{' + CUDA graphs' if runner.graphs else ''}, "
                               f"{'batch-invariant' if runner.batch_invariant else 'fast path'}, "
                               f"{_layers_desc(runner, opts.layers)}, {torch.get_num_threads()} torch threads")
    modes = {"fused": (True,), "stock": (False,), "both": (True, False)}[opts.layers]
    if runner.forward.fused_layers is None:  # batch-invariant, or a model the fused layer does not take
        modes = (False,)
    runs = {True: result.engine_runs, False: result.stock_runs if len(modes) == 2 else result.engine_runs}
    try:
        top = prompts[: max(opts.concurrency)]
        for fused in modes:  # warm-up: allocator, kernels, CUDA graphs
            _use_fused(runner.forward, fused)
            engine_run(core, top, opts.max_tokens)
        if reference is not None:
            generate_run(reference, top, opts.max_tokens, pad_id)
        for repeat in range(opts.repeats):
            for c in opts.concurrency:
                for fused in modes[::-1] if repeat % 2 else modes:  # each variant first in every other repeat
                    _use_fused(runner.forward, fused)
                    runs[fused].setdefault(c, []).append(engine_run(core, prompts[:c], opts.max_tokens))
                if reference is not None:
                    result.generate_runs.setdefault(c, []).append(
                        generate_run(reference, prompts[:c], opts.max_tokens, pad_id))
        _use_fused(runner.forward, modes[0])
        if opts.poisson_requests and reference is not None:
            result.poisson = _poisson(core, reference, prompts[: opts.poisson_requests], opts, pad_id, result)
        if opts.prefix_cache_conversations and not runner.batch_invariant:
            from tools.bench.prefix_cache import second_turn

            result.prefix_cache = second_turn(core, opts.prefix_cache_conversations, opts.prompt_tokens,
                                              opts.prefix_cache_reply_tokens, opts.repeats)
    finally:
        core.stop()
    result.kv = kv_capacity(opts.kv_budget_tokens, opts.prompt_tokens, 2048, 64, runner.kv.block_size)
    return result


def _use_fused(forward, fused: bool) -> None:
    """Switches the engine's batched forwards between the fused and the stock decoder layers
    (between runs only: the engine thread is idle then)."""
    forward.use_fused = fused and forward.fused_layers is not None


def _layers_desc(runner, layers: str) -> str:
    if runner.forward.fused_layers is None:
        return "stock decoder layers" + ("" if runner.batch_invariant else " (the fused layer does not take this model)")
    return {"fused": "fused decoder layers", "stock": "stock decoder layers",
            "both": "fused and stock decoder layers alternating"}[layers]


def _poisson(core, reference, prompts, opts: EngineBenchOptions, pad_id: int, result: EngineBenchResult) -> dict:
    """{"fixed": ..., "mixed": ...}: the two output-length workloads, same arrivals."""
    top = max(opts.concurrency)
    rate = opts.poisson_rate or result.engine[top] / opts.max_tokens
    arrivals = poisson_arrivals(len(prompts), rate)
    workloads = {"fixed": [opts.max_tokens] * len(prompts), "mixed": mixed_lengths(len(prompts), opts.max_tokens)}
    out = {}
    for name, lengths in workloads.items():
        engine_s, engine_lat = engine_poisson(core, prompts, arrivals, lengths)
        static = StaticBatchServer(reference, pad_id, top)
        static_s, static_lat = static.serve(prompts, arrivals, lengths)
        out[name] = {"rate_per_s": rate, "num_requests": len(prompts), "mean_tokens": statistics.mean(lengths),
                     "engine_tokens_per_s": sum(lengths) / engine_s, "static_tokens_per_s": sum(lengths) / static_s,
                     "engine_mean_latency_s": statistics.mean(engine_lat),
                     "static_mean_latency_s": statistics.mean(static_lat),
                     "static_mean_batch": statistics.mean(static.batch_sizes)}
    return out
