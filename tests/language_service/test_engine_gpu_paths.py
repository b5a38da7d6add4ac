"""The GPU-only paths: CUDA-graph decode and the paged decode kernels (flash-attn's; Triton's
compiled, which test_triton_decode.py runs interpreted on the CPU). On CPU they must stay out
of the way (the runner never builds them); with CUDA, graph replay must give eager's tokens (the
batched buckets replay the fused decoder layers, `engine/fused.py`).
scripts/gpu_check.sh exercises them end to end on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from dvd.devices import flash_attn_available
from language_service.engine.cuda_graphs import MIN_KEY_BUCKET, DecodeGraphs, batch_buckets, bucket
from language_service.engine.runner import ModelRunner
from tests.language_service.conftest import drive

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_batch_buckets_cover_every_size():
    buckets = batch_buckets(64)
    assert buckets == [1, 2, 4, 8, 16, 32, 48, 64]
    assert [bucket(n, buckets) for n in (1, 3, 9, 33, 64)] == [1, 4, 16, 48, 64]
    assert batch_buckets(5) == [1, 2, 4, 5]


def test_cpu_runner_builds_no_graphs(tiny_kit):
    runner = ModelRunner(tiny_kit.model, tiny_kit.image_token_id, 8, 16, cuda_graphs=True)
    assert runner.graphs is None


class EagerGraph:
    """CudaGraph's stand-in on the CPU: "replay" reruns the captured step on the same static
    buffers and writes the same output tensor, as a replayed graph does, so the tokens show
    whether `DecodeGraphs` loads ids, rotary, gather slots, masks and write slots into those
    buffers correctly (padding rows, key buckets, both layer paths). What a real capture freezes
    (Python-side values) only a GPU checks: the CUDA tests below and scripts/gpu_check.sh."""

    def __init__(self, step, pool) -> None:
        self.step, self.pool = step, pool
        self.output = step()

    def replay(self) -> None:
        self.output.copy_(self.step())


def test_graph_buffers_load_what_eager_decode_reads(tiny_kit):
    def requests():
        long_text, words = "", 0
        while len(tiny_kit.tokenizer.encode(long_text)) < MIN_KEY_BUCKET - 8:  # decodes past the first key bucket
            long_text, words = long_text + f"word{words} ", words + 1
        texts = [("short one", 4), ("a middling prompt with a few more words " * 3, 9), (long_text, 24)]
        return [tiny_kit.request(f"r{i}", text, n) for i, (text, n) in enumerate(texts)]

    eager = requests()
    drive(tiny_kit.engine(), {0: eager})
    engine = tiny_kit.engine()
    runner = engine.runner
    runner.graphs = DecodeGraphs(runner.forward, runner.kv, runner.planner, 8, paged=None, recorder=EagerGraph)
    graphed = requests()
    drive(engine, {0: graphed})
    assert [r.token_ids for r in graphed] == [r.token_ids for r in eager]
    keys = set(runner.graphs.graphs)
    # 3 rows in the 4-row bucket (one padding row), then 2, then the long prompt's row alone (the
    # stock layers); keys padded to 256, then to 512 once that row passes 256 keys
    assert keys == {(4, 256, True), (2, 256, True), (2, 512, True), (1, 512, True)}


def _tokens_on_cuda(kit, attention: str, graphs: bool, dtype: torch.dtype = torch.float32,
                    decode_attention: str = "auto") -> list[list[int]]:
    kit.model.to("cuda", dtype)
    try:
        engine = kit.engine(kv_block_size=256 if attention == "flash_attention_2" else 16, cuda_graphs=graphs,
                            attn_implementation=attention, decode_attention=decode_attention)
        assert (engine.runner.graphs is not None) == graphs
        requests = [kit.request(f"g{i}", f"graph request {i} " * (i + 1), 12) for i in range(3)]
        drive(engine, {0: requests})
        if graphs:  # three rows decode in the 4-row bucket: captured through the fused layers
            assert any(fused for (_, _, fused) in engine.runner.graphs.graphs)
        return [r.token_ids for r in requests]
    finally:
        kit.model.to("cpu", torch.float32)


@cuda
def test_cuda_graph_decode_matches_eager(tiny_kit):
    assert _tokens_on_cuda(tiny_kit, "sdpa", True) == _tokens_on_cuda(tiny_kit, "sdpa", False)
    assert _tokens_on_cuda(tiny_kit, "eager", True) == _tokens_on_cuda(tiny_kit, "eager", False)


@cuda
@pytest.mark.skipif(not flash_attn_available(), reason="needs flash-attn")
def test_flash_paged_decode_agrees_with_sdpa(tiny_kit):
    """bf16 (flash-attn's dtypes): different kernels round differently, so agreement, not equality."""
    flash = _tokens_on_cuda(tiny_kit, "flash_attention_2", True, torch.bfloat16)
    sdpa = _tokens_on_cuda(tiny_kit, "sdpa", False, torch.bfloat16)
    same = sum(a == b for f, s in zip(flash, sdpa) for a, b in zip(f, s))
    assert same >= 0.8 * sum(len(s) for s in sdpa)


@cuda
def test_triton_paged_decode_on_cuda(tiny_kit):
    """The compiled Triton kernel (the CPU suite runs it interpreted): fp32 under a graph equals
    eager Triton decode, and it agrees with gather + SDPA in bf16."""
    fp32 = _tokens_on_cuda(tiny_kit, "sdpa", True, decode_attention="triton")
    assert fp32 == _tokens_on_cuda(tiny_kit, "sdpa", False, decode_attention="triton")
    triton = _tokens_on_cuda(tiny_kit, "sdpa", True, torch.bfloat16, decode_attention="triton")
    sdpa = _tokens_on_cuda(tiny_kit, "sdpa", False, torch.bfloat16)
    same = sum(a == b for t, s in zip(triton, sdpa) for a, b in zip(t, s))
    assert same >= 0.8 * sum(len(s) for s in sdpa)
