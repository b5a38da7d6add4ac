"""The fused decoder layer (`engine/fused.py`) against transformers' stock layer on the same
inputs, plan and cache; its weights are views of one fused copy; unrecognised layers fall back.

FUSED_BOUND: the fused layer sums in a different order (one QKV / gate_up GEMM, the residual add
inside the GEMM, torch's RMSNorm), so it is not bit-equal to the stock layer; fp32 CPU, one
layer's output and the keys/values it writes stay within this absolute bound (observed max
1.4e-6 on outputs of magnitude 3-6: tiny, small and their Qwen3 -flash twins)."""

from __future__ import annotations

import copy

import pytest
import torch

from language_service.engine.forward import DecoderForward, fused_layers
from language_service.engine.fused import FusedLayer, Rope, unsupported_reason
from language_service.engine.kv_cache import PagedKVCache
from language_service.engine.plans import Planner
from language_service.engine.scheduler import PrefillChunk
from tests.language_service.conftest import EngineKit, drive

FUSED_BOUND = 2e-5
BLOCK_SIZE = 16
NUM_BLOCKS = 24


@pytest.fixture(scope="module", params=["tiny", "tiny_flash"])
def layer_kit(request) -> EngineKit:
    """Qwen2 (tiny) and Qwen3 (tiny-flash) decoders, each its own model (fusing re-points weights),
    set up by an engine as the service sets it up (paged attention registered, weights fused)."""
    kit = EngineKit(request.getfixturevalue(f"{request.param}_ckpt"))
    kit.engine()
    return kit


def _sequences(kit: EngineKit, lengths: list[int]) -> list:
    """Sequences with `lengths` tokens each, their blocks laid out one after another."""
    seqs, next_block = [], 0
    for i, length in enumerate(lengths):
        seq = kit.request(f"s{i}", "x", 1).seq
        seq.prompt_ids = list(range(3, 3 + length))
        width = -(-length // BLOCK_SIZE) + 1
        seq.block_table = list(range(next_block, next_block + width))
        next_block += width
        seqs.append(seq)
    return seqs


def _caches(kit: EngineKit) -> tuple[PagedKVCache, PagedKVCache]:
    """Two caches holding the same random keys and values."""
    first = PagedKVCache(kit.model.config, NUM_BLOCKS, BLOCK_SIZE, torch.device("cpu"), torch.float32)
    first.kv.copy_(torch.randn(first.kv.shape, generator=torch.Generator().manual_seed(1)))
    second = PagedKVCache(kit.model.config, NUM_BLOCKS, BLOCK_SIZE, torch.device("cpu"), torch.float32)
    second.kv.copy_(first.kv)
    return first, second


def _compare(kit: EngineKit, inputs, hidden: torch.Tensor) -> None:
    """Layer 0, stock vs fused, on hidden [R, T, H] under `inputs`: outputs and written K/V."""
    forward = DecoderForward(kit.model, fused=True)
    stock_kv, fused_kv = _caches(kit)
    cos, sin = forward.rotary(hidden, inputs.position_ids)  # each [R, T, D]
    with torch.inference_mode():
        stock_kv.plan_writes(inputs.write_slots)
        expected = forward.layers[0](hidden, attention_mask=None, position_embeddings=(cos, sin),
                                     **{forward.cache_kwarg: stock_kv, "dvd_plan": inputs.plan})
        fused_kv.plan_writes(inputs.write_slots)
        got = forward.fused_layers[0](hidden.reshape(-1, hidden.shape[-1]), Rope(cos, sin), fused_kv, inputs.plan)
    assert (got - expected.reshape(got.shape)).abs().max() <= FUSED_BOUND
    assert (fused_kv.kv - stock_kv.kv).abs().max() <= FUSED_BOUND
    assert (fused_kv.kv != stock_kv.kv).any(), "the layer should have written keys"


def test_fused_layer_matches_the_stock_layer_on_a_batched_decode(layer_kit):
    seqs = _sequences(layer_kit, [37, 5, 20])
    for seq in seqs:
        seq.num_cached_tokens = seq.num_tokens - 1
    inputs = Planner(BLOCK_SIZE, NUM_BLOCKS, torch.device("cpu")).decode(seqs)
    hidden = torch.randn(3, 1, layer_kit.hidden_size, generator=torch.Generator().manual_seed(2))  # [R, 1, H]
    _compare(layer_kit, inputs, hidden)


def test_fused_layer_matches_the_stock_layer_on_a_packed_prefill(layer_kit):
    seqs = _sequences(layer_kit, [30, 9, 18])
    chunks = [PrefillChunk(seqs[0], 0, 30), PrefillChunk(seqs[1], 0, 9), PrefillChunk(seqs[2], 10, 8)]
    inputs = Planner(BLOCK_SIZE, NUM_BLOCKS, torch.device("cpu")).packed_prefill(chunks)
    hidden = torch.randn(1, 47, layer_kit.hidden_size, generator=torch.Generator().manual_seed(3))  # [1, N, H]
    _compare(layer_kit, inputs, hidden)


def _storages(module: torch.nn.Module) -> dict[int, int]:
    """Storage address -> bytes, over every parameter (each storage once)."""
    return {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}


def test_fused_weights_are_views_of_one_copy(layer_kit):
    model = layer_kit.model
    layer_kit.engine()  # fuses
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    before = sum(_storages(model).values())
    fused = fused_layers(model, list(model.model.layers))[0]  # a second runner on the same model
    assert sum(_storages(model).values()) == before, "fusing again must not copy"
    assert sum(_storages(model).values()) == sum(p.numel() * p.element_size() for p in model.parameters())
    rows = attn.q_proj.weight.shape[0]
    assert attn.q_proj.weight.data_ptr() == fused.qkv_weight.data_ptr()
    assert attn.k_proj.weight.data_ptr() == fused.qkv_weight[rows:].data_ptr()
    assert attn.v_proj.weight.data_ptr() == fused.qkv_weight[rows + attn.k_proj.weight.shape[0]:].data_ptr()
    assert mlp.gate_proj.weight.data_ptr() == fused.gate_up_weight.data_ptr()
    assert mlp.up_proj.weight.data_ptr() == fused.gate_up_weight[mlp.gate_proj.weight.shape[0]:].data_ptr()
    if attn.q_proj.bias is not None:
        assert attn.k_proj.bias.data_ptr() == fused.qkv_bias[rows:].data_ptr()
    assert model.lm_head.weight.shape == model.get_input_embeddings().weight.shape


def test_an_unrecognised_layer_keeps_the_stock_layers(tiny_kit):
    model = copy.deepcopy(tiny_kit.model)
    model.model.layers[1].self_attn.sliding_window = 8
    assert "sliding" in unsupported_reason(model.model.layers[1], 16, 16)
    assert fused_layers(model, list(model.model.layers)) is None
    model.model.layers[1].self_attn.sliding_window = None
    model.model.layers[0].mlp.extra = torch.nn.Identity()
    assert "MLP" in unsupported_reason(model.model.layers[0], 16, 16)
    assert DecoderForward(model, fused=True).fused_layers is None


def _stock_layer_calls(kit: EngineKit, engine, requests) -> int:
    calls = []
    hook = kit.model.model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        drive(engine, {0: requests})
    finally:
        hook.remove()
    return len(calls)


def test_single_rows_run_the_stock_layers_and_batches_the_fused_ones(tiny_kit):
    solo = [tiny_kit.request("solo", "one row alone", 6)]
    assert _stock_layer_calls(tiny_kit, tiny_kit.engine(), solo) == 6  # prefill + 5 decode steps
    crowd = [tiny_kit.request(f"r{i}", f"row {i} " * (i + 1), 6) for i in range(3)]
    assert _stock_layer_calls(tiny_kit, tiny_kit.engine(), crowd) == 0  # one packed prefill, batched decode
    assert _stock_layer_calls(tiny_kit, tiny_kit.engine(batch_invariant=True), crowd[:1]) > 0
    assert tiny_kit.engine(batch_invariant=True).runner.forward.fused_layers is None
    assert isinstance(tiny_kit.engine().runner.forward.fused_layers[0], FusedLayer)
