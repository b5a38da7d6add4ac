"""`python -m tools.bench.decode_attention`: which batched decode-attention path is fastest on this
machine, one layer, the small preset's heads (8 query, 2 KV, head dim 32), keys in the paged
cache's slot layout (`language_service/engine/kv_cache.py`) spread over random 16-slot blocks.

Per batch size: the per-row loop the engine used before (one SDPA call per sequence on views),
and the batched paths (one call for the batch): gather + SDPA with a length mask (with
`enable_gqa`, and with each GQA group folded into the query axis, what the engine runs), gather
+ eager softmax(QK^T)V. Median microseconds over `--iters`, every path in the same process and run."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, DIM, BLOCK = 8, 2, 32, 16


def _timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(iters):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def paths(batch: int, num_keys: int) -> dict:
    slots = 65536
    keys, values = torch.randn(slots, KV_HEADS, DIM), torch.randn(slots, KV_HEADS, DIM)  # [slots, kv_heads, D]
    blocks = torch.randperm(slots // BLOCK)[: batch * num_keys // BLOCK].view(batch, -1)
    gather = (blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).reshape(-1)  # [B * S]
    lengths = num_keys - torch.randint(0, 32, (batch,))
    mask = (torch.arange(num_keys)[None] < lengths[:, None])[:, None, None]  # [B, 1, 1, S]
    query = torch.randn(batch, HEADS, 1, DIM)
    # the old layout: every sequence's keys a contiguous extent of a [1, kv_heads, positions, D] arena
    arena_k, arena_v = keys[: batch * num_keys].permute(1, 0, 2)[None], values[: batch * num_keys].permute(1, 0, 2)[None]

    def per_row():
        return [F.scaled_dot_product_attention(query[b:b + 1], arena_k[:, :, b * num_keys:b * num_keys + int(n)],
                                               arena_v[:, :, b * num_keys:b * num_keys + int(n)], enable_gqa=True)
                for b, n in enumerate(lengths)]

    def gathered():
        shape = (batch, num_keys, KV_HEADS, DIM)
        return (keys.index_select(0, gather).view(shape).transpose(1, 2),
                values.index_select(0, gather).view(shape).transpose(1, 2))

    def sdpa():
        k, v = gathered()
        return F.scaled_dot_product_attention(query, k, v, attn_mask=mask, enable_gqa=True)

    def folded():
        k, v = gathered()
        grouped = query.view(batch, KV_HEADS, HEADS // KV_HEADS, DIM)
        return F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask)

    def eager():
        k, v = gathered()
        grouped = query.view(batch, KV_HEADS, HEADS // KV_HEADS, DIM)
        scores = torch.matmul(grouped, k.transpose(2, 3)) * DIM**-0.5
        return torch.matmul(scores.masked_fill(~mask, float("-inf")).softmax(-1), v)

    return {"per-row SDPA loop": per_row, "gather only": gathered, "gather + SDPA enable_gqa": sdpa,
            "gather + SDPA folded": folded, "gather + eager": eager}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.bench.decode_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--keys", type=int, default=304)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"decode attention, one layer, {a.keys} keys per row, {torch.get_num_threads()} threads, median us")
    print("| batch | " + " | ".join(paths(1, a.keys)) + " |")
    print("|---:|" + "---:|" * len(paths(1, a.keys)))
    for batch in (int(b) for b in a.batches.split(",")):
        with torch.inference_mode():
            row = [_timed(fn, a.iters) for fn in paths(batch, a.keys).values()]
        print(f"| {batch} | " + " | ".join(f"{us:.0f}" for us in row) + " |")


if __name__ == "__main__":
    main()
