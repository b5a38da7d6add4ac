"""`python -m tools.bench.paged_decode`: one layer's decode attention as the engine runs it, per
backend, on a GPU: the gather path (`BatchedPlan`: each row's keys gathered into a padded copy,
then SDPA with the GQA group folded into the query axis), the Triton paged kernel (`PagedPlan`,
kernel "triton") and flash-attn's (`PagedPlan`, kernel "flash", when it imports). Keys sit in the
engine's cache layout ([slots, kv_heads, D] per layer) in randomly scattered blocks, rows of
slightly different lengths, InternVL3-1B's heads by default. Reports the median time per call
and each backend's largest difference from the gather path (the engine's reference path).

Why it exists: the engine bench's ~300-token prompts hardly show the gather's cost, while an
InternVL image alone is up to 13 x 256 = 3,328 tokens of context. `scripts/gpu_check.sh` runs it;
on a CPU only the gather path runs (and the Triton kernel, slowly, under TRITON_INTERPRET=1)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dvd.devices import flash_attn_available
from language_service.engine.attention import BatchedPlan, PagedPlan
from language_service.engine.plans import Planner
from language_service.engine.triton_decode import interpreter_on, triton_available

FLASH_BLOCK = 256  # flash-attn's paged kernel takes blocks of 256 slots


def _timed(fn, iters: int, device: torch.device) -> float:
    """Median microseconds per call (CUDA: synchronised around each call)."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def _layout(rows: int, keys: int, block: int, kv_heads: int, dim: int, dtype, device, generator):
    """A layer cache [2, slots, kv_heads, D] with each row's blocks scattered over it, the block
    table [rows, width] int32 and lengths [rows] int32 (up to 31 keys short of `keys`)."""
    width = -(-keys // block)
    num_blocks = rows * width * 2  # half of the cache unused, as in a running server
    layer_kv = torch.randn(2, num_blocks * block, kv_heads, dim, generator=generator).to(device, dtype)
    table = torch.randperm(num_blocks, generator=generator)[: rows * width].view(rows, width)
    lengths = (keys - torch.randint(0, 32, (rows,), generator=generator)).clamp(min=1)
    return layer_kv, table.to(device, torch.int32), lengths.to(device, torch.int32)


def _gather_plan(table: torch.Tensor, lengths: torch.Tensor, block: int, keys: int, dtype) -> BatchedPlan:
    """What `Planner.decode` builds: every row's slots for `keys` positions and an additive mask."""
    planner = Planner(block, 0, table.device, "sdpa", dtype)
    offsets = torch.arange(block, device=table.device)
    slots = (table.long()[:, :, None] * block + offsets).view(table.shape[0], -1)[:, :keys]  # [R, S]
    keep = torch.arange(keys, device=table.device)[None] < lengths[:, None].long()  # [R, S]
    return BatchedPlan(table.shape[0], keys, slots.reshape(-1), planner.batch_mask(keep[:, None, None]))


def measure(rows: int, keys: int, heads: int, kv_heads: int, dim: int, dtype, device, iters: int) -> dict:
    generator = torch.Generator().manual_seed(rows * 7919 + keys)
    scale = dim**-0.5
    query = torch.randn(rows, heads, dim, generator=generator).to(device, dtype)
    layer_kv, table, lengths = _layout(rows, keys, 16, kv_heads, dim, dtype, device, generator)
    gather = _gather_plan(table, lengths, 16, keys, dtype)
    reference = gather.attend_flat(query, layer_kv, scale)
    result = {"rows": rows, "keys": keys, "us": {"gather + sdpa": _timed(lambda: gather.attend_flat(query, layer_kv,
                                                                                                 scale), iters, device)},
              "max_abs_diff": {}}
    runs = []  # (name, plan, layer cache, the gather path's output on that cache)
    if triton_available() and (device.type == "cuda" or interpreter_on()):
        runs.append(("triton", PagedPlan(table, lengths, 16, "triton"), layer_kv, reference))
    if device.type == "cuda" and flash_attn_available():
        flash_kv, flash_table, _ = _layout(rows, keys, FLASH_BLOCK, kv_heads, dim, dtype, device, generator)
        flash_reference = _gather_plan(flash_table, lengths, FLASH_BLOCK, keys, dtype).attend_flat(query, flash_kv,
                                                                                                  scale)
        runs.append(("flash", PagedPlan(flash_table, lengths, FLASH_BLOCK, "flash"), flash_kv, flash_reference))
    for name, plan, kv, expected in runs:
        out = plan.attend_flat(query, kv, scale)
        result["max_abs_diff"][name] = float((out.float() - expected.float()).abs().max())
        result["us"][name] = _timed(lambda plan=plan, kv=kv: plan.attend_flat(query, kv, scale), iters, device)
    return result


def run(device: torch.device, dtype: torch.dtype, batches: list[int], keys: list[int], heads: int = 14,
        kv_heads: int = 2, dim: int = 64, iters: int = 50) -> list[dict]:
    """`measure` for every (keys, rows) pair, keys outermost."""
    with torch.inference_mode():
        return [measure(rows, n, heads, kv_heads, dim, dtype, device, iters) for n in keys for rows in batches]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.paged_decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--keys", default="512,4096", help="keys per row, comma-separated")
    p.add_argument("--heads", type=int, default=14, help="query heads (InternVL3-1B: 14)")
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json", default="", help="also write the results here")
    a = p.parse_args(argv)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    results = run(device, dtype, _ints(a.batches), _ints(a.keys), a.heads, a.kv_heads, a.head_dim, a.iters)
    names = list(results[0]["us"])
    print(f"decode attention, one layer, {a.heads} query / {a.kv_heads} KV heads, head dim {a.head_dim}, "
          f"{device.type}/{a.dtype}, median us per call (max |difference| from the gather path)")
    print("| keys | rows | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))
    for r in results:
        cells = [f"{r['us'][n]:.0f}" + (f" ({r['max_abs_diff'][n]:.1e})" if n in r["max_abs_diff"] else "")
                 for n in names]
        print(f"| {r['keys']} | {r['rows']} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": str(device), "dtype": a.dtype, "heads": a.heads,
                                            "kv_heads": a.kv_heads, "head_dim": a.head_dim, "results": results},
                                           indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
