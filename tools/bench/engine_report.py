"""`dvd bench engine`'s printed report: the engine vs generate table, the fused vs stock decoder
layers table (when both ran), the per-repeat ratios behind every median, Poisson and KV capacity."""

from __future__ import annotations

import statistics

from tools.bench.engine import EngineBenchOptions, EngineBenchResult, Run

NAN = float("nan")


def format_table(result: EngineBenchResult, opts: EngineBenchOptions) -> str:
    lines = [f"engine vs transformers generate: {opts.checkpoint.name}, {result.device}",
             f"~{opts.prompt_tokens}-token prompts, {opts.max_tokens} greedy tokens each, whole-run tokens/s "
             f"(prefill included), median of {opts.repeats}, engine and generate alternating", ""]
    lines += _engine_table(result, opts.concurrency[0])
    if result.stock_runs:
        lines += ["", "the same engine with transformers' stock decoder layers (same replica and weights, "
                  "run next to the fused engine, before generate, in every repeat):", ""]
        lines += _stock_table(result)
    lines += ["", "per repeat, wall clock (CPU clock):"] + _per_repeat(result)
    lines += [""] if result.poisson else []
    for name, p in result.poisson.items():
        lines += [f"Poisson arrivals, {name} output lengths (mean {p['mean_tokens']:.0f}): "
                  f"{p['num_requests']} requests at {p['rate_per_s']:.2f}/s; engine "
                  f"{p['engine_tokens_per_s']:.1f} tokens/s vs static-batch server {p['static_tokens_per_s']:.1f} "
                  f"({p['engine_tokens_per_s'] / p['static_tokens_per_s']:.2f}x, static batches of "
                  f"{p['static_mean_batch']:.1f} on average); mean latency "
                  f"{p['engine_mean_latency_s']:.2f} s vs {p['static_mean_latency_s']:.2f} s"]
    if result.prefix_cache:
        from tools.bench.prefix_cache import format_prefix_cache

        lines += [""] + format_prefix_cache(result.prefix_cache, opts.prefix_cache_reply_tokens)
    if result.kv:
        kv = result.kv
        lines += ["", f"KV capacity at {kv.budget_tokens} tokens (max_tokens 2048, 64 actual output tokens, "
                  f"blocks of {kv.block_size}): paged {kv.paged_mean:.0f} sequences running on average while queued "
                  f"(peak {kv.paged_peak}, {kv.num_preemptions} preemptions) vs {kv.reserved} reserved: {kv.ratio:.1f}x"]
    return "\n".join(lines)


def _median_rates(runs: dict[int, list[Run]], cpu: bool = False) -> dict[int, float]:
    return {c: statistics.median(r.cpu_rate if cpu else r.rate for r in rs) for c, rs in runs.items()}


def _engine_table(result: EngineBenchResult, base_c: int) -> list[str]:
    lines = [f"| concurrency | engine tokens/s | generate tokens/s | engine / generate | same, CPU clock | "
             f"engine vs concurrency {base_c} | same, CPU clock |", "|---:|---:|---:|---:|---:|---:|---:|"]
    engine, generate, ratios, cpu_ratios = result.engine, result.generate, result.ratios(), result.ratios(cpu=True)
    cpu = _median_rates(result.engine_runs, cpu=True)
    for c, rate in engine.items():
        lines.append(f"| {c} | {rate:.1f} | {generate.get(c, NAN):.1f} | {ratios.get(c, NAN):.2f}x | "
                     f"{cpu_ratios.get(c, NAN):.2f}x | {rate / engine[base_c]:.2f}x | {cpu[c] / cpu[base_c]:.2f}x |")
    return lines


def _stock_table(result: EngineBenchResult) -> list[str]:
    stock = result.stock_runs
    lines = ["| concurrency | stock-layer engine tokens/s | stock-layer engine / generate | same, CPU clock | "
             "fused / stock layers | same, CPU clock |", "|---:|---:|---:|---:|---:|---:|"]
    over_generate, over_generate_cpu = result.ratios(runs=stock), result.ratios(cpu=True, runs=stock)
    fused, fused_cpu = result.ratios(over=stock), result.ratios(cpu=True, over=stock)
    for c, rate in _median_rates(stock).items():
        lines.append(f"| {c} | {rate:.1f} | {over_generate.get(c, NAN):.2f}x | {over_generate_cpu.get(c, NAN):.2f}x | "
                     f"{fused.get(c, NAN):.2f}x | {fused_cpu.get(c, NAN):.2f}x |")
    return lines


def _per_repeat(result: EngineBenchResult) -> list[str]:
    series = {"engine / generate": {}, "stock-layer engine / generate": dict(runs=result.stock_runs),
              "fused / stock layers": dict(over=result.stock_runs)}
    lines = []
    for name, pairing in series.items():
        if pairing and not result.stock_runs:
            continue
        wall, cpu = result.paired(**pairing), result.paired(cpu=True, **pairing)
        cells = [f"c={c}: {', '.join(f'{r:.2f}' for r in wall[c])} ({', '.join(f'{r:.2f}' for r in cpu[c])})"
                 for c in wall]
        lines.append(f"- {name}: " + "; ".join(cells))
    return lines
