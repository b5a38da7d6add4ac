"""The random-init checkpoints are useful test oracles: greedy output depends on the text and on
the image, with clear argmax margins; and the 1b-shape preset has InternVL3-1B's real shapes."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import InternVLForConditionalGeneration
from transformers.models.internvl.modeling_internvl import InternVLModel

from dvd.checkpoint import load_language_state, load_processor, load_vision_state
from language_service.model import build_language_model
from tools.checkpoint import make_checkpoint
from vision_service.modules import build_vision_modules

NUM_NEW_TOKENS = 16
PROMPTS = ("What is in this picture?", "Describe the colors in detail, please.")


def _images() -> dict[str, Image.Image]:
    noise = (np.random.default_rng(0).random((448, 448, 3)) * 255).astype("uint8")
    return {"red": Image.new("RGB", (448, 448), (220, 30, 30)), "noise": Image.fromarray(noise)}


def _greedy(model, processor, prompt: str, image: Image.Image | None) -> tuple[list[int], float]:
    """(new token ids, smallest top-1/top-2 logit gap over the steps) of a greedy generation."""
    content = [{"type": "text", "text": prompt}]
    if image is not None:
        content.insert(0, {"type": "image"})
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=None if image is None else [image], text=[text], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=NUM_NEW_TOKENS, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    top2 = torch.stack([scores[0].topk(2).values for scores in out.scores])  # [steps, 2]
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), (top2[:, 0] - top2[:, 1]).min().item()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_greedy_generation_depends_on_text_and_image(tmp_path, preset):
    ckpt = make_checkpoint(preset, tmp_path / preset, seed=0)
    model = InternVLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    processor = load_processor(ckpt)
    outputs, gaps = {}, []
    for prompt in PROMPTS:
        for name, image in [*_images().items(), ("text-only", None)]:
            outputs[prompt, name], gap = _greedy(model, processor, prompt, image)
            gaps.append(gap)
    for tokens in outputs.values():
        assert len(tokens) == NUM_NEW_TOKENS  # special tokens (EOS included) are never chosen
        assert len(set(tokens)) >= NUM_NEW_TOKENS // 2, tokens  # not one token, nor a short loop
        assert not set(tokens) & set(processor.tokenizer.added_tokens_decoder)
    for name in ("red", "noise", "text-only"):
        assert outputs[PROMPTS[0], name] != outputs[PROMPTS[1], name]  # the text matters
    for prompt in PROMPTS:
        assert outputs[prompt, "red"] != outputs[prompt, "noise"]  # the image matters
    # fp32 implementation noise (sdpa vs eager attention) moves these logits by up to ~1e-4:
    # margins this wide mean a split deployment and the monolithic reference pick the same tokens.
    assert min(gaps) > 1e-3


@pytest.mark.slow
def test_1b_shape_has_internvl3_1b_shapes_and_splits(tmp_path):
    ckpt = make_checkpoint("1b-shape", tmp_path / "1b", seed=0)
    assert len(list(ckpt.glob("model-*-of-*.safetensors"))) > 1
    vision, language = load_vision_state(ckpt), load_language_state(ckpt)
    assert {tensor.dtype for tensor in [*vision.values(), *language.values()]} == {torch.bfloat16}
    assert sum(t.numel() for t in vision.values()) == 304_012_288 + 4_482_816  # InternViT-300M + mlp1
    assert language["model.embed_tokens.weight"].shape == (151674, 896)
    assert language["lm_head.weight"].shape == (151674, 896)
    assert language["lm_head.weight"] is not language["model.embed_tokens.weight"]  # untied, as released
    assert language["model.layers.23.self_attn.k_proj.weight"].shape == (128, 896)  # 2 kv heads x 64
    assert vision["vision_tower.encoder.layer.23.attention.q_proj.bias"].shape == (1024,)
    assert vision["multi_modal_projector.linear_1.weight"].shape == (896, 4096)
    del vision, language

    modules = build_vision_modules(ckpt, torch.float32, "cpu")
    vision_tower, projector, config = modules.vision_tower, modules.projector, modules.config
    language_model = build_language_model(ckpt, torch.float32, "cpu")
    processor = load_processor(ckpt)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = processor(images=[_images()["noise"]], text=[text], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 448, 448)
    with torch.inference_mode():
        hidden = vision_tower(pixel_values=inputs["pixel_values"]).last_hidden_state[:, 1:, :]
        shuffled = _pixel_shuffle(hidden, config.downsample_ratio)
        features = projector(shuffled)  # [1, 256, 896]
        ids = inputs["input_ids"]
        embeds = language_model.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter((ids == config.image_token_id).unsqueeze(-1), features.reshape(-1, 896))
        split_logits = language_model(inputs_embeds=embeds).logits[0, -1]
    del vision_tower, projector, language_model
    full = InternVLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.inference_mode():
        full_logits = full(**inputs).logits[0, -1]
    torch.testing.assert_close(split_logits, full_logits, rtol=0, atol=1e-5)
    assert split_logits.argmax() == full_logits.argmax()


def _pixel_shuffle(hidden: torch.Tensor, ratio: float) -> torch.Tensor:
    """[T, 1024, C] ViT patch tokens -> [T, 256, 4C], as InternVLModel.get_image_features lays them out."""
    tiles, patches, channels = hidden.shape
    side = int(patches**0.5)
    shuffled = InternVLModel.pixel_shuffle(None, hidden.reshape(tiles, side, side, channels), ratio)
    return shuffled.reshape(tiles, -1, shuffled.shape[-1])
