"""The language half of a checkpoint: the LLM decoder and lm_head, built from either checkpoint
layout while reading only language tensors."""

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from dvd.checkpoint import load_language_state, load_model_config
from dvd.checkpoint.assign import assign_state, parameters_on_meta


def build_language_model(
    ckpt: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """The text config's causal LM (Qwen2ForCausalLM for InternVL3) with the checkpoint's weights.

    No ViT or projector tensor is read. Feed it `inputs_embeds` with the image features scattered
    into the <IMG_CONTEXT> positions, as InternVLModel.forward does.
    """
    text_config = copy.deepcopy(load_model_config(ckpt).text_config)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(text_config, attn_implementation=attn_implementation)
    assign_state(model, load_language_state(ckpt, device), dtype, device, f"{ckpt} language model")
    return model.eval()
