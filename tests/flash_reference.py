"""The correctness reference for InternVL3.5-Flash checkpoints (original InternVLChatModel layout).

transformers cannot load this layout (InternVLForConditionalGeneration has no router, and the
remote code is not shipped), so this is a whole-model forward in one process written from the
published `modeling_internvl_chat.py` (`extract_feature_flash` + `generate_flash`), reading the
original tensor names directly: InternViT with its fused qkv, `mlp1`, the router
(`pooling_before_gating` with its attn2/norm2 reuse, `gating`), `mlp2`, the quantile rule over
every tile of the request, and the placeholder compression (a compressed tile keeps the first 64
of its 256 `<IMG_CONTEXT>`). It shares no code with `dvd.checkpoint`'s key map or the vision
service's modules. The inputs are what the published `model.chat` feeds that model
(`tests/model_card.py`): the cards' `load_image` tiling and the `internvl2_5` conversation
template with its default system message; the LLM is transformers' causal LM run through `generate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tests import model_card

TOKENS, COMPRESSED = 256, 64


@dataclass
class FlashOutput:
    token_ids: list[int]
    compressed: list[bool]  # per tile, in request order
    margin: float  # smallest distance of a score from a threshold it is compared with (auto only)


class FlashReference:
    def __init__(self, checkpoint: Path) -> None:
        self.raw = json.loads((checkpoint / "config.json").read_text())
        self.w = _read_all(checkpoint)
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        llm = self.raw["llm_config"]
        config = AutoConfig.for_model(llm["model_type"], **{k: v for k, v in llm.items() if k != "model_type"})
        self.llm = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        state = {k.removeprefix("language_model."): v for k, v in self.w.items() if k.startswith("language_model.")}
        self.llm.load_state_dict(state, strict=True)
        self.pool_attn = {i: self._mha(f"pooling_before_gating.attn{i}") for i in (1, 2)}

    def _mha(self, prefix: str) -> nn.MultiheadAttention:
        dim = self.raw["vision_config"]["hidden_size"]
        mha = nn.MultiheadAttention(dim, 16, batch_first=True)
        mha.load_state_dict({k[len(prefix) + 1:]: v for k, v in self.w.items() if k.startswith(prefix + ".")})
        return mha.eval()

    # --- vision -------------------------------------------------------------------------
    def vit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """InternViT: [T, 3, 448, 448] -> last hidden state without the class token [T, 1024, C]."""
        v, w = self.raw["vision_config"], self.w
        heads, eps = v["num_attention_heads"], v["layer_norm_eps"]
        x = F.conv2d(pixel_values, w["vision_model.embeddings.patch_embedding.weight"],
                     w["vision_model.embeddings.patch_embedding.bias"], stride=v["patch_size"])
        x = x.flatten(2).transpose(1, 2)  # [T, 1024, C]
        cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + w["vision_model.embeddings.position_embedding"]
        for i in range(v["num_hidden_layers"]):
            p = f"vision_model.encoder.layers.{i}."
            h = F.layer_norm(x, x.shape[-1:], w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
            q, k, val = F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"]).chunk(3, dim=-1)
            split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
            a = F.scaled_dot_product_attention(split(q), split(k), split(val)).transpose(1, 2).flatten(2)
            x = x + w[p + "ls1"] * F.linear(a, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
            h = F.layer_norm(x, x.shape[-1:], w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
            h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                         w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
            x = x + w[p + "ls2"] * h
        return x[:, 1:, :]

    def _mlp(self, prefix: str, linear_indices: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        w = self.w
        x = F.layer_norm(x, x.shape[-1:], w[f"{prefix}.0.weight"], w[f"{prefix}.0.bias"])
        for n, i in enumerate(linear_indices):
            x = F.linear(x, w[f"{prefix}.{i}.weight"], w[f"{prefix}.{i}.bias"])
            if n < len(linear_indices) - 1:
                x = F.gelu(x)
        return x

    def project(self, tokens: torch.Tensor, scale: float) -> torch.Tensor:
        """Pixel shuffle (InternVL's, ps_version v2) then mlp1 (0.5) or mlp2 (0.25)."""
        t, n, c = tokens.shape
        side = int(n**0.5)
        x = tokens.reshape(t, side, side, c).reshape(t, side, int(side * scale), int(c / scale))
        x = x.permute(0, 2, 1, 3).reshape(t, int(side * scale), int(side * scale), int(c / scale**2))
        x = x.permute(0, 2, 1, 3).reshape(t, -1, int(c / scale**2))
        return self._mlp("mlp1", (1, 3), x) if scale == 0.5 else self._mlp("mlp2", (1, 4, 7), x)

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """The router's compress probability per tile (column 0 of the gating softmax)."""
        w = self.w
        norm = lambda x, i: F.layer_norm(x, x.shape[-1:], w[f"pooling_before_gating.norm{i}.weight"],  # noqa: E731
                                         w[f"pooling_before_gating.norm{i}.bias"])
        mask = torch.zeros(tokens.shape[:2], dtype=torch.bool)
        out = w["pooling_before_gating.query_token"].unsqueeze(0).expand(tokens.shape[0], -1, -1)
        out = norm(self.pool_attn[1](out, tokens, tokens, key_padding_mask=mask)[0], 1)
        for _ in range(3):  # published: steps 2, 3 and 4 all use attn2 / norm2
            out = norm(self.pool_attn[2](out, tokens, tokens, key_padding_mask=mask)[0], 2)
        x = out.squeeze(1)
        for b in range(1, 5):
            p = f"gating.block{b}."
            h = F.linear(F.gelu(F.linear(x, w[p + "0.weight"], w[p + "0.bias"])), w[p + "3.weight"], w[p + "3.bias"])
            x = x + F.layer_norm(h, h.shape[-1:], w[p + "5.weight"], w[p + "5.bias"])
        x = F.layer_norm(x, x.shape[-1:], w["gating.gate.0.weight"], w["gating.gate.0.bias"])
        return torch.softmax(F.linear(x, w["gating.gate.1.weight"], w["gating.gate.1.bias"]), dim=-1)[:, 0]

    # --- the whole model ----------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, conversation: list[dict], images: list[bytes], max_new_tokens: int, vir: str,
                 frames: bool = False, relative: float | None = None, absolute: float | None = None,
                 min_tiles: int = 1, max_tiles: int = 12) -> FlashOutput:
        """`model.chat` on an HF-form conversation (a leading system turn is `model.system_message`).
        `frames`: every image is a video frame (one tile, no thumbnail)."""
        tiles = [model_card.load_image(b, min_num=min_tiles, max_num=1 if frames else max_tiles) for b in images]
        question, history, system = model_card.chat_args(conversation)
        query = model_card.model_chat_query(question, history or None, [len(t) for t in tiles], system)
        ids = self.tokenizer(query, return_tensors="pt")["input_ids"][0]
        embeds = self.llm.get_input_embeddings()(ids)  # [N, H]
        compressed, margin = [], float("inf")
        if tiles:
            tokens = self.vit(torch.cat(tiles))  # [T, 1024, C]
            compressed, margin = self._decide(tokens, vir, relative, absolute)
            feats = [self.project(tokens[i:i + 1], 0.25 if c else 0.5)[0] for i, c in enumerate(compressed)]
            ids, embeds = self._compress_placeholders(ids, embeds, compressed)
            embeds[ids == self.image_token_id] = torch.cat(feats)
        out = self.llm.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False)
        return FlashOutput(out[0].tolist(), compressed, margin)

    def _decide(self, tokens: torch.Tensor, vir: str, relative, absolute) -> tuple[list[bool], float]:
        if vir in ("off", "max"):
            return [vir == "max"] * tokens.shape[0], float("inf")
        relative = self.raw["flash_relative_threshold"] if relative is None else relative
        absolute = self.raw["flash_absolute_threshold"] if absolute is None else absolute
        s = self.scores(tokens)
        q = torch.quantile(s.float(), relative)
        # A score the quantile lands on exactly is never "above" it, whatever its last bits; any
        # other score this close to a threshold could flip on float noise between implementations.
        gaps = torch.cat([(s - q).abs()[s != q], (s - absolute).abs()])
        margin = gaps.min().item() if gaps.numel() else float("inf")
        return ((s > q) & (s >= absolute)).tolist(), margin

    def _compress_placeholders(self, ids: torch.Tensor, embeds: torch.Tensor, compressed: list[bool]):
        """A compressed tile keeps the first 64 of its 256 placeholders (`compress_visual_tokens_in_sentence`)."""
        keep = torch.ones(len(ids), dtype=torch.bool)
        positions = (ids == self.image_token_id).nonzero().flatten()
        assert len(positions) == TOKENS * len(compressed)
        for tile, c in enumerate(compressed):
            if c:
                keep[positions[tile * TOKENS + COMPRESSED:(tile + 1) * TOKENS]] = False
        return ids[keep], embeds[keep].clone()

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def _read_all(checkpoint: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            tensors.update({k: f.get_tensor(k).float() for k in f.keys()})
    return tensors
