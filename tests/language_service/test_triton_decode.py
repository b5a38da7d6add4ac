"""The Triton paged decode (`engine/triton_decode.py`, `decode_attention="triton"`): the kernel
against a per-row SDPA reference over the same keys, then the engine and its CUDA-graph buffers
on it. Off a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET):
the same program, executed with numpy, so these check its indexing and softmax, not its speed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dvd.config import LanguageConfig
from language_service.engine.build import engine_backend
from language_service.engine.cuda_graphs import DecodeGraphs
from language_service.engine.triton_decode import paged_decode, triton_available
from tests.language_service.conftest import drive
from tests.language_service.test_engine_fast_path import _check_against_solo
from tests.language_service.test_engine_gpu_paths import EagerGraph

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton")

KERNEL_BOUND = 1e-5  # fp32, |kernel - reference|; observed <= 4e-7


def _reference(query, keys, values, table, lengths, block_size, scale) -> torch.Tensor:
    """Each row alone: its keys gathered position by position, one SDPA call."""
    rows = []
    for row, length in enumerate(lengths.tolist()):
        pos = torch.arange(length)
        slots = table[row].long()[pos // block_size] * block_size + pos % block_size
        k, v = keys[slots].transpose(0, 1), values[slots].transpose(0, 1)  # [kv_heads, length, D]
        rows.append(F.scaled_dot_product_attention(query[row][:, None], k, v, scale=scale, enable_gqa=True)[:, 0])
    return torch.stack(rows)  # [rows, heads, D]


def _case(heads: int, kv_heads: int, dim: int, block_size: int, lengths: list[int], extra_blocks: int = 0, seed=0):
    """A random cache of 4096 slots, each row's blocks scattered over it (plus unused table columns)."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(4096, kv_heads, dim, generator=generator)
    values = torch.randn(4096, kv_heads, dim, generator=generator)
    width = -(-max(lengths) // block_size) + extra_blocks
    table = torch.randperm(4096 // block_size, generator=generator)[: len(lengths) * width].view(len(lengths), width)
    query = torch.randn(len(lengths), heads, dim, generator=generator)
    return query, keys, values, table.to(torch.int32), torch.tensor(lengths, dtype=torch.int32)


@pytest.mark.parametrize("heads, kv_heads, dim, block_size, splits", [
    (8, 2, 32, 16, 1),  # the small preset's heads
    (14, 2, 64, 16, 3),  # InternVL3-1B's (Qwen2.5-0.5B): a group of 7, padded to 16; three key splits
    (4, 4, 48, 8, 2),  # no GQA, a head dim that is not a power of two, blocks of 8
])
def test_kernel_matches_per_row_sdpa(heads, kv_heads, dim, block_size, splits):
    lengths = [1, 15, 16, 17, 64, 130, 301]  # one key, block edges, several tiles
    query, keys, values, table, lens = _case(heads, kv_heads, dim, block_size, lengths)
    out = paged_decode(query, keys, values, table, lens, block_size, dim**-0.5, splits)
    assert out.shape == query.shape
    assert (out - _reference(query, keys, values, table, lens, block_size, dim**-0.5)).abs().max() <= KERNEL_BOUND


def test_unused_table_columns_and_strided_queries_change_nothing():
    """A graph's table is wider than its rows need (key buckets) and the fused layer's queries are
    a strided slice of the QKV output: with one split, the same arithmetic, bit for bit."""
    query, keys, values, table, lens = _case(8, 2, 32, 16, [40, 200, 77], extra_blocks=5)
    narrow = table[:, : -(-200 // 16)].contiguous()
    qkv = torch.cat([query, torch.randn(3, 4, 32)], dim=1)  # [rows, heads + 2 kv, D] as the fused layer has it
    wide = paged_decode(qkv[:, :8], keys, values, table, lens, 16, 0.2, splits=1)
    assert torch.equal(wide, paged_decode(query, keys, values, narrow, lens, 16, 0.2, splits=1))


def test_triton_engine_within_bound_of_gather_solo_runs(tiny_kit):
    """The tiny model's staggered crowd (images, chunked prefill, rows joining and leaving) decoding
    through the Triton kernel: every step's logits within the fast path's bound of each request
    run alone on the default path (which equals `generate`), tokens equal wherever the margin is
    clear."""
    limits = dict(max_prefill_tokens=192)
    engine = tiny_kit.engine(decode_attention="triton")
    assert engine.runner.backend == "triton"
    assert _check_against_solo(tiny_kit, {**limits, "decode_attention": "triton"}, limits) > 50


def test_graph_buffers_load_the_block_tables(tiny_kit):
    """The paged graph path (block table + lengths in static buffers, padding rows on the scratch
    block), replayed eagerly: the same tokens as eager Triton decode."""
    def requests():
        texts = [("short one", 6), ("a middling prompt with a few more words " * 3, 9), ("word " * 90, 14)]
        return [tiny_kit.request(f"r{i}", text, n) for i, (text, n) in enumerate(texts)]

    eager = requests()
    drive(tiny_kit.engine(decode_attention="triton"), {0: eager})
    engine = tiny_kit.engine(decode_attention="triton")
    runner = engine.runner
    runner.graphs = DecodeGraphs(runner.forward, runner.kv, runner.planner, 8, "triton", recorder=EagerGraph)
    graphed = requests()
    drive(engine, {0: graphed})
    assert [r.token_ids for r in graphed] == [r.token_ids for r in eager]
    assert {rows for rows, _, _ in runner.graphs.graphs} == {4, 2, 1}  # 3 rows (one padding), then 2, then 1


COMPILE_FOR_H100 = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from language_service.engine.triton_decode_kernel import paged_decode_kernel as kernel

    for dtype in ("*bf16", "*fp32"):
        signature = {name: "i32" for name in kernel.arg_names}
        signature.update(q_ptr=dtype, k_ptr=dtype, v_ptr=dtype, table_ptr="*i32", lengths_ptr="*i32",
                         acc_ptr="*fp32", ml_ptr="*fp32", scale="fp32")
        constants = dict(GROUP=7, GROUP_PAD=16, HEAD_DIM=64, DIM_PAD=64, BLOCK_SIZE=16, TILE=64, NUM_SPLITS=2,
                         NUM_KV_HEADS=2, IEEE=dtype == "*fp32")
        signature.update({name: "constexpr" for name in constants})
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(kernel.arg_names.index(n),): v for n, v in constants.items()})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert ".entry paged_decode_kernel" in compiled.asm["ptx"], dtype
    print("compiled")
""")


def test_kernel_compiles_for_an_h100():
    """What the interpreter does not check (block shapes tl.dot accepts, bf16 dots, register
    layouts): Triton compiles the kernel to PTX and a cubin for sm_90, InternVL3-1B's shapes, in
    bf16 and fp32, with no GPU present (a fresh process: this one runs Triton interpreted)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "compiled", done.stderr[-2000:]


def test_triton_is_refused_where_it_cannot_run(monkeypatch, tiny_kit):
    cfg = LanguageConfig(model="m", decode_attention="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        engine_backend(cfg, "sdpa", torch.device("cpu"))
    assert engine_backend(LanguageConfig(model="m", decode_attention="triton", batch_invariant=True), "sdpa",
                          torch.device("cpu")) == "sdpa"  # invariance keeps its per-row path
    assert engine_backend(LanguageConfig(model="m", decode_attention="gather"), "flash_attention_2",
                          torch.device("cuda")) == "sdpa"
    with pytest.raises(ValueError, match="decode_attention"):
        LanguageConfig(model="m", decode_attention="paged")


def test_the_language_service_flag_sets_it():
    from language_service.__main__ import parse_config

    assert parse_config(["--model", "m"]).decode_attention == "auto"
    assert parse_config(["--model", "m", "--decode-attention", "triton"]).decode_attention == "triton"
