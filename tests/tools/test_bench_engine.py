"""`dvd bench engine` on the tiny checkpoint: with `layers="both"` every repeat measures the fused
and the stock-layer engine next to generate, and the report prints both tables and the per-repeat
ratios behind the medians (no timing is asserted)."""

from __future__ import annotations

from tools.bench.engine import EngineBenchOptions, run_engine_bench
from tools.bench.engine_report import format_table


def test_fused_and_stock_layers_are_both_measured_next_to_generate(tiny_ckpt):
    opts = EngineBenchOptions(checkpoint=tiny_ckpt, concurrency=(1, 3), max_tokens=4, prompt_tokens=40, repeats=2,
                              device="cpu", poisson_requests=0, prefix_cache_conversations=0)  # threads=0: leaves the process setting alone
    result = run_engine_bench(opts)
    for runs in (result.engine_runs, result.stock_runs, result.generate_runs):
        assert {c: len(r) for c, r in runs.items()} == {1: 2, 3: 2}
        assert all(run.num_tokens == 4 * c for c, rs in runs.items() for run in rs)
    assert set(result.ratios(over=result.stock_runs)) == {1, 3}
    table = format_table(result, opts)
    assert "fused and stock decoder layers alternating" in table
    assert "| stock-layer engine tokens/s |" in table and "- fused / stock layers: c=1: " in table


def test_the_prefix_cache_section_measures_a_second_turn_with_the_cache_on_and_off(tiny_ckpt):
    opts = EngineBenchOptions(checkpoint=tiny_ckpt, concurrency=(2,), max_tokens=4, prompt_tokens=40, repeats=2,
                              device="cpu", poisson_requests=0, baseline=False, layers="fused",
                              prefix_cache_conversations=3, prefix_cache_reply_tokens=4)
    result = run_engine_bench(opts)
    cache = result.prefix_cache
    assert [len(cache.ttft_s[m]) for m in ("on", "off")] == [2, 2] and len(cache.tokens_per_s["on"]) == 2
    # turn 2 starts with turn 1's prompt: at least its full blocks come from the cache (when on)
    assert 0 < cache.cached_fraction < 1 and cache.turn2_prompt_tokens > 40
    assert "Prefix cache, second chat turn (3 conversations" in format_table(result, opts)
