"""`dvd bench vit` on the tiny checkpoint: every width is timed and its grid equals the widest's."""

from __future__ import annotations

from tools.bench.vit import VitBenchOptions, format_table, run_vit_bench


def test_every_width_is_timed_and_changes_no_value(tiny_ckpt):
    opts = VitBenchOptions(checkpoint=tiny_ckpt, widths=(1, 2, 3), tiles=3, repeats=1, device="cpu")
    result = run_vit_bench(opts)
    assert set(result.ms_per_image) == {1, 2, 3} and all(ms > 0 for ms in result.ms_per_image.values())
    assert set(result.max_abs_diff) == {1, 2, 3} and max(result.max_abs_diff.values()) <= 1e-6
    table = format_table(result, opts)
    assert "| 3 |" in table and "1.00x" in table and "cpu/float32" in table
