"""The ViR router: the published decision rule, the published module layout (names, the attn2
reuse), and the encoder's three paths on a Flash checkpoint against the test-side reference."""

from __future__ import annotations

import pytest
import torch

from dvd.types import VirMode
from tests.conftest import png_bytes, shapes_png
from tests.flash_reference import FlashReference
from vision_service.encoder import TileEncoder, VirPlan
from vision_service.preprocess import ResolvedTiling, preprocess
from vision_service.vir import CrossAttentionPooling, FlashHeads, decide


def _decide(scores, relative=0.1, absolute=0.5, group=None) -> list[bool]:
    scores = torch.tensor(scores)
    return decide(scores, scores if group is None else torch.tensor(group), relative, absolute).tolist()


def test_relative_quantile_and_absolute_threshold_both_apply():
    scores = [0.9, 0.2, 0.6, 0.55, 0.7]  # 10% quantile: 0.2 + 0.4 * (0.55 - 0.2) = 0.34
    assert _decide(scores) == [True, False, True, True, True]
    assert _decide(scores, absolute=0.65) == [True, False, False, False, True]
    assert _decide(scores, relative=0.5) == [True, False, False, False, True]  # above the median 0.6 only
    assert _decide(scores, relative=0.0) == [True, False, True, True, True]  # "above the minimum"
    assert _decide(scores, relative=1.0) == [False] * 5  # nothing is above the maximum


def test_edge_cases_of_the_published_rule():
    assert _decide([0.99]) == [False]  # one tile is its own quantile: never "above" it
    assert _decide([0.8, 0.8, 0.8]) == [False] * 3  # exact ties never compress
    assert _decide([0.5, 0.49, 0.7, 0.3]) == [True, False, True, False]  # >= absolute, not >
    assert _decide([0.1, 0.2, 0.3], absolute=0.0) == [False, True, True]


def test_tiles_are_ranked_against_the_whole_request():
    # This image alone would compress its better tile; among the request's tiles neither is high enough.
    assert _decide([0.4, 0.8]) == [False, True]
    assert _decide([0.4, 0.8], relative=0.5, group=[0.4, 0.8, 0.9, 0.95, 0.99]) == [False, False]
    assert _decide([0.95, 0.99], relative=0.5, group=[0.4, 0.8, 0.9, 0.95, 0.99]) == [True, True]


def test_comparison_follows_torch_promotion_in_the_compute_dtype():
    # bf16 scores against the float32 quantile compare as the published code does (in bf16).
    scores = torch.tensor([0.3, 0.6, 0.7, 0.8], dtype=torch.bfloat16)
    q = torch.quantile(scores.float(), 0.1)
    assert decide(scores, scores.float(), 0.1, 0.5).tolist() == ((scores > q) & (scores >= 0.5)).tolist()


def test_module_names_are_the_flash_checkpoints():
    heads = FlashHeads(vit_hidden=64, llm_hidden=32, downsample_ratio=0.5)
    expected = {f"mlp2.{i}.{p}" for i in (0, 1, 4, 7) for p in ("weight", "bias")}
    expected.add("pooling_before_gating.query_token")
    for i in range(1, 5):
        expected |= {f"pooling_before_gating.attn{i}.{p}"
                     for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}
        expected |= {f"pooling_before_gating.norm{i}.{p}" for p in ("weight", "bias")}
        expected |= {f"gating.block{i}.{j}.{p}" for j in (0, 3, 5) for p in ("weight", "bias")}
    expected |= {f"gating.gate.{j}.{p}" for j in (0, 1) for p in ("weight", "bias")}
    assert set(heads.state_dict()) == expected
    assert heads.mlp2[0].normalized_shape == (64 * 16,) and heads.mlp2[7].out_features == 32
    assert heads.gating.block1[0].out_features == 4 * 64


def test_pooling_runs_attn1_then_attn2_three_times():
    torch.manual_seed(0)
    pool = CrossAttentionPooling(32).eval()
    for p in pool.parameters():
        torch.nn.init.normal_(p, std=0.2)
    tokens = torch.randn(3, 16, 32)
    with torch.inference_mode():
        before = pool(tokens)
        for unused in (pool.attn3, pool.attn4, pool.norm3, pool.norm4):
            for p in unused.parameters():
                p.add_(torch.randn_like(p))
        assert torch.equal(pool(tokens), before)  # defined, loaded, never used
        pool.attn2.out_proj.weight.add_(torch.randn_like(pool.attn2.out_proj.weight))
        assert not torch.allclose(pool(tokens), before)


@pytest.fixture(scope="module")
def flash_encoder(tiny_flash_ckpt):
    return TileEncoder(str(tiny_flash_ckpt), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def tiles():
    return preprocess(shapes_png(3), ResolvedTiling()).pixel_values  # 2x2 grid + thumbnail


def test_off_is_the_non_flash_path(flash_encoder, tiny_ckpt, tiles):
    """tiny-flash is tiny's ViT and mlp1 (same seed, same tensor names) plus the router: vir=off
    must give the HF-layout checkpoint's features bit for bit."""
    plain = TileEncoder(str(tiny_ckpt), torch.device("cpu"), torch.float32)
    assert not plain.has_router and flash_encoder.has_router and flash_encoder.flash_mode
    off = flash_encoder.encode(tiles, VirPlan(VirMode.OFF))
    assert off.tile_tokens == (256,) * 5
    assert torch.equal(off.features, plain.encode(tiles).features)


def test_paths_match_the_reference(flash_encoder, tiny_flash_ckpt, tiles):
    reference = FlashReference(tiny_flash_ckpt)
    with torch.inference_mode():
        tokens = reference.vit(tiles)
        expected_scores = reference.scores(tokens)
    grid = flash_encoder.vit(tiles)
    torch.testing.assert_close(flash_encoder.compress_scores(grid), expected_scores, rtol=0, atol=1e-5)
    maxed = flash_encoder.finish(grid, VirPlan(VirMode.MAX))
    assert maxed.tile_tokens == (64,) * 5
    torch.testing.assert_close(maxed.features, reference.project(tokens, 0.25).reshape(-1, maxed.features.shape[-1]),
                               rtol=1e-4, atol=1e-4)
    auto = flash_encoder.finish(grid, VirPlan(VirMode.AUTO, 0.1, 0.5))
    compress = decide(expected_scores, expected_scores, 0.1, 0.5).tolist()
    assert auto.tile_tokens == tuple(64 if c else 256 for c in compress)
    assert 0 < sum(compress) < 5  # a meaningful mix at the default thresholds
    per_tile = [reference.project(tokens[i:i + 1], 0.25 if c else 0.5)[0] for i, c in enumerate(compress)]
    torch.testing.assert_close(auto.features, torch.cat(per_tile), rtol=1e-4, atol=1e-4)


def test_group_scores_decide_against_the_request(flash_encoder, tiles):
    grid = flash_encoder.vit(tiles)
    own = flash_encoder.compress_scores(grid)
    high = tuple(float(own.max()) + 0.01 for _ in range(20))  # other images' tiles all score higher
    ranked = flash_encoder.finish(grid, VirPlan(VirMode.AUTO, 0.5, 0.0, group=tuple(own.tolist()) + high))
    assert ranked.tile_tokens == (256,) * 5


def test_one_tile_image_never_compresses_in_auto(flash_encoder):
    one = preprocess(png_bytes(448, 448, seed=2), ResolvedTiling()).pixel_values
    assert flash_encoder.encode(one, VirPlan(VirMode.AUTO, 0.1, 0.0)).tile_tokens == (256,)
