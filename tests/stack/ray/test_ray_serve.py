"""The Ray Serve deployment end to end on a local 2-CPU Ray: the gateway ingress and the two pool
deployments serve the tiny checkpoint through the official `openai` client and the gRPC gateway,
token for token like `InternVLForConditionalGeneration.generate`; embeddings go by reference (gRPC from the vision
replica); and under a vision-heavy load Serve scales the vision pool up while the language pool,
which could scale too (its max is 2 and the CPUs for it are free), stays at one replica."""

from __future__ import annotations

import threading
import time

import grpc
import openai
import pytest
from openai import OpenAI

from dvd.types import TilingOptions, VirOptions
from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, vision_pb2, vision_pb2_grpc
from stack.launcher import free_port
from stack.ray_serve.local import LocalOptions, LocalRayServe, replica_counts
from tests.conftest import png_bytes
from tests.integration.cases import CASES, ask_openai_about_an_image, data_url
from tests.integration.test_e2e import grpc_chat
from tests.reference import Reference

MAX_TOKENS = 12
FAST = {"upscale_delay_s": 1.0, "downscale_delay_s": 600.0, "look_back_period_s": 2.0}
# The vision target is lowered from the production 4 to 2 so that a handful of clients is a
# clear overload on a 2-core machine; language keeps its production target (12 sequences).
VISION_AUTOSCALING = {**FAST, "target_ongoing_requests": 2}
LANGUAGE_AUTOSCALING = {**FAST}
SCALE_WINDOW_S = 240.0  # generous: replica start-up on 2 busy cores takes tens of seconds
CLIENTS = 4
IMAGES_PER_REQUEST = 4  # 896x896: a 2x2 grid + thumbnail = 5 tiles each


@pytest.fixture(scope="module")
def ray_serve(tiny_ckpt):
    opts = LocalOptions(model=str(tiny_ckpt), device="cpu", dtype="float32", port=free_port(), grpc_port=free_port(),
                        num_cpus=2, max_vision_replicas=2, max_language_replicas=2,
                        vision_autoscaling=VISION_AUTOSCALING, language_autoscaling=LANGUAGE_AUTOSCALING)
    with LocalRayServe(opts) as serve:
        yield serve


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    return Reference(tiny_ckpt)


def test_greedy_answers_equal_the_single_process_reference(ray_serve, reference):
    """Token ids through the gRPC gateway, text through REST, both as HF's generate has them."""
    client = OpenAI(base_url=ray_serve.base_url, api_key="unused")
    answers = {}
    for case in CASES:
        conversation, images = case.hf_conversation()
        expected = reference.generate(conversation, images, MAX_TOKENS)
        ids, text, responses = grpc_chat(ray_serve, case.openai_messages(), MAX_TOKENS)
        assert ids == expected, f"{case.name}: Ray Serve {ids} != reference {expected}"
        assert responses[-1].finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
        reply = client.chat.completions.create(model="internvl", messages=case.openai_messages(),
                                               max_tokens=MAX_TOKENS, temperature=0)
        assert reply.choices[0].message.content == text == reference.decode(expected), case.name
        answers[case.name] = tuple(ids)
    assert len(set(answers.values())) == len(answers), f"answers collide: {answers}"


def test_openai_client_streams_an_image_answer(ray_serve):
    answer = ask_openai_about_an_image(ray_serve.base_url)
    assert answer.streamed and answer.streamed == answer.whole.choices[0].message.content
    assert answer.stream_usage.prompt_tokens == answer.whole.usage.prompt_tokens > 256  # one tile of image tokens
    client = OpenAI(base_url=ray_serve.base_url, api_key="unused")
    assert [m.id for m in client.models.list()] == ["internvl"]


def test_grpc_gateway_on_serves_grpc_proxy(ray_serve):
    """dvd.v1.Gateway on Serve's gRPC proxy: models, and domain errors as their status codes."""
    with grpc.insecure_channel(ray_serve.grpc_target) as channel:
        reply = gateway_pb2_grpc.GatewayStub(channel).ListModels(gateway_pb2.ListModelsRequest(), timeout=30)
    assert [m.id for m in reply.models] == ["internvl"]
    broken = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(b"not a png")}}]}]
    with pytest.raises(grpc.RpcError) as failed:
        grpc_chat(ray_serve, broken)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value


def test_domain_errors_keep_their_status_through_serve(ray_serve):
    client = OpenAI(base_url=ray_serve.base_url, api_key="unused", max_retries=0)
    broken = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(b"not a png")}}]}]
    with pytest.raises(openai.BadRequestError, match="cannot decode image"):  # raised inside the vision replica
        client.chat.completions.create(model="internvl", messages=broken, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=CASES[0].openai_messages(), max_tokens=2)


def test_embeddings_are_served_by_the_vision_replica_over_grpc(ray_serve):
    """What the language replicas do: the ref names the vision replica's gRPC address, and its
    FetchEmbedding returns the blob the ref describes."""
    from ray import serve

    result = serve.get_deployment_handle("vision", app_name="dvd").encode.remote(
        png_bytes(448, 448, color=(1, 2, 3)), TilingOptions(), VirOptions(), None).result(timeout_s=60)
    ref = result.ref
    assert ref.location.startswith("grpc://127.0.0.1:")
    with grpc.insecure_channel(ref.location.removeprefix("grpc://")) as channel:
        stub = vision_pb2_grpc.VisionEncoderStub(channel)
        request = vision_pb2.FetchEmbeddingRequest(key=ref.key, access_token=ref.access_token)
        chunks = list(stub.FetchEmbedding(request, timeout=30))
        with pytest.raises(grpc.RpcError) as info:  # the content key alone reads nothing
            list(stub.FetchEmbedding(vision_pb2.FetchEmbeddingRequest(key=ref.key), timeout=30))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert sum(len(c.data) for c in chunks) == ref.num_bytes > 0


def test_vision_pool_scales_up_alone_under_vision_heavy_load(ray_serve):
    """Distinct multi-tile images (no cache hits) and one output token per request: the vision
    pool's ongoing requests per replica pass its target, the language pool's stay far below."""
    assert _running(replica_counts()) == {"gateway": 1, "vision": 1, "language": 1}
    stop = threading.Event()
    errors: list[Exception] = []
    completed = [0] * CLIENTS
    clients = [threading.Thread(target=_vision_heavy_client, args=(ray_serve.base_url, i, stop, errors, completed),
                                daemon=True) for i in range(CLIENTS)]
    for thread in clients:
        thread.start()
    started = time.monotonic()
    history = [(0.0, replica_counts())]
    try:
        while time.monotonic() - started < SCALE_WINDOW_S and not errors:
            history.append((time.monotonic() - started, replica_counts()))
            if history[-1][1]["vision"].get("RUNNING", 0) >= 2:
                break
            time.sleep(1.0)
        # Keep the load on a while longer: the language pool must still not follow.
        for _ in range(10):
            time.sleep(1.0)
            history.append((time.monotonic() - started, replica_counts()))
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
    _print_timeline(history)
    print(f"{sum(completed)} requests completed ({IMAGES_PER_REQUEST} images of 5 tiles each, 1 output token)")
    assert not errors, errors[:3]
    assert max(counts["vision"].get("RUNNING", 0) for _, counts in history) == 2, history[-3:]
    assert max(sum(counts["language"].values()) for _, counts in history) == 1, history


def _print_timeline(history: list[tuple[float, dict]]) -> None:
    """The replica counts each time they changed (`pytest -s` shows it; BENCHMARKS.md records one)."""
    last = None
    for i, (elapsed, counts) in enumerate(history):
        if counts != last or i == len(history) - 1:
            print(f"t={elapsed:5.1f}s  " + "  ".join(f"{name}={states}" for name, states in sorted(counts.items())))
            last = counts


def _running(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {name: states.get("RUNNING", 0) for name, states in counts.items()}


def _vision_heavy_client(base_url: str, client_id: int, stop: threading.Event, errors: list, completed: list) -> None:
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    n = 0
    while not stop.is_set():
        images = [png_bytes(896, 896, color=(client_id * 60, (n * 7 + i) % 256, (n // 37) % 256))
                  for i in range(IMAGES_PER_REQUEST)]
        content = [{"type": "image_url", "image_url": {"url": data_url(img)}} for img in images]
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": "?"}]}]
        try:
            client.chat.completions.create(model="internvl", messages=messages, max_tokens=1, temperature=0)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            return
        n += 1
        completed[client_id] = n
