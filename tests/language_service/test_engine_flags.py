"""The engine's mode and geometry flags reach the config: `--batch-invariant`,
`--no-prefix-caching` and `--decode-attention` on the language service, on `stack.monolithic` (through the launcher) and on
`dvd serve`."""

from __future__ import annotations

from pathlib import Path

from language_service.__main__ import parse_config
from stack.launcher import LocalStack, StackOptions
from tools.cli import build_parser


def test_language_service_flags():
    cfg = parse_config(["--model", "m", "--batch-invariant", "--kv-block-size", "32", "--no-cuda-graphs"])
    assert cfg.batch_invariant and cfg.kv_block_size == 32 and not cfg.cuda_graphs
    default = parse_config(["--model", "m"])
    assert not default.batch_invariant and default.cuda_graphs and default.kv_block_size == 0


def _spawned(monkeypatch, **options) -> list[tuple[str, list[str]]]:
    """(module, argv) of every process the launcher starts, split and monolithic, with `options`."""
    spawned = []
    for monolithic in (False, True):
        stack = LocalStack(StackOptions(checkpoint=Path("ckpt"), monolithic=monolithic, **options))
        monkeypatch.setattr(stack, "_spawn", lambda name, module, argv, *_: spawned.append((module, argv)))
        stack._start_pools()
    return spawned


def test_dvd_serve_threads_batch_invariant_to_every_language_process(monkeypatch):
    args = build_parser().parse_args(["serve", "--batch-invariant"])
    assert args.batch_invariant
    spawned = _spawned(monkeypatch, batch_invariant=True)
    assert {m for m, argv in spawned if "--batch-invariant" in argv} == {"language_service", "stack.monolithic"}
    assert all("--batch-invariant" not in argv for m, argv in spawned if m == "vision_service")


def test_no_prefix_caching_reaches_every_language_process(monkeypatch):
    assert not parse_config(["--model", "m", "--no-prefix-caching"]).prefix_caching
    assert parse_config(["--model", "m"]).prefix_caching
    args = build_parser().parse_args(["serve", "--no-prefix-caching"])
    assert args.no_prefix_caching and not build_parser().parse_args(["serve"]).no_prefix_caching
    spawned = _spawned(monkeypatch, prefix_caching=False)
    assert {m for m, argv in spawned if "--no-prefix-caching" in argv} == {"language_service", "stack.monolithic"}


def test_decode_attention_reaches_every_language_process(monkeypatch):
    from stack.monolithic import parse_configs

    assert build_parser().parse_args(["serve", "--decode-attention", "triton"]).decode_attention == "triton"
    spawned = _spawned(monkeypatch, decode_attention="triton")
    chosen = {m: argv[argv.index("--decode-attention") + 1] for m, argv in spawned if "--decode-attention" in argv}
    assert chosen == {"language_service": "triton", "stack.monolithic": "triton"}
    assert parse_config(["--model", "m", "--decode-attention", "gather"]).decode_attention == "gather"
    assert parse_configs(["--model", "m", "--decode-attention", "triton"])[1].decode_attention == "triton"
