"""Each half holds only its own tensors: asserted on the loaded state in this process, and
on the running processes through their Info RPCs (weight bytes = the checkpoint's share)."""

from __future__ import annotations

import grpc
from safetensors import safe_open

from dvd.checkpoint import load_language_state, load_vision_state
from dvd.config import DeviceConfig, LanguageConfig, VisionConfig
from language_service.core import LanguageCore
from protos.v1 import language_pb2, language_pb2_grpc, vision_pb2, vision_pb2_grpc
from vision_service.core import VisionCore

CPU = DeviceConfig(device="cpu", dtype="float32")


def test_loaded_state_is_disjoint(tiny_ckpt):
    vision = VisionCore(VisionConfig(model=str(tiny_ckpt), device=CPU), tiny_ckpt, location="grpc://x:1")
    vision.load()
    names = vision.encoder.tensor_names()
    assert names and all(n.startswith(("vision_tower.", "multi_modal_projector.")) for n in names)
    language = LanguageCore(LanguageConfig(model=str(tiny_ckpt), device=CPU), tiny_ckpt)
    language.load()
    try:
        names = language.tensor_names()
        assert names and not any("vision" in n or "projector" in n for n in names)
        assert all(n.startswith(("model.", "lm_head.")) for n in names)
    finally:
        language.stop()


def test_running_processes_hold_only_their_half(stacks, small_ckpt):
    stack = stacks(small_ckpt)
    with grpc.insecure_channel(stack.vision_targets[0]) as channel:
        vision = vision_pb2_grpc.VisionEncoderStub(channel).Info(vision_pb2.VisionInfoRequest(), timeout=10)
    with grpc.insecure_channel(stack.language_targets[0]) as channel:
        language = language_pb2_grpc.LanguageDecoderStub(channel).Info(language_pb2.LanguageInfoRequest(), timeout=10)
    vision_state, language_state = load_vision_state(small_ckpt), load_language_state(small_ckpt)
    # fp32 on CPU: each process holds exactly its share of the checkpoint, 4 bytes a value,
    # tied embeddings once; together the shares are the whole checkpoint.
    assert vision.weight_bytes == _numel(vision_state) * 4
    assert language.weight_bytes == _numel(language_state) * 4
    total = 0
    for shard in small_ckpt.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            total += sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert (vision.weight_bytes + language.weight_bytes) // 4 == total
    assert vision.model_id == language.model_id


def _numel(state: dict) -> int:
    unique = {t.data_ptr(): t for t in state.values()}
    return sum(t.numel() for t in unique.values())


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
