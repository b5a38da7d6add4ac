"""Faults on one real stack (1 vision + 1 language + gateway + Redis, tiny preset, loopback, with
the supervisor that `dvd serve` runs): lost embeddings are re-encoded, a pool with no replica
answers 503, the gateway's bound answers 429 with Retry-After, a client that goes away (streaming
or not) aborts its sequence in the language engine, and a request's deadline ends its work."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from stack.launcher import LocalStack, StackOptions
from stack.local_redis import RedisServer
from stack.supervisor import RestartPolicy, Supervisor
from tests.conftest import png_bytes
from tests.integration.cases import data_url
from tests.metrics_scrape import scrape

LONG = 8000  # tokens: far more than any test waits for


@pytest.fixture(scope="module")
def env(tiny_ckpt, tmp_path_factory):
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    log_dir = tmp_path_factory.mktemp("logs")
    # --replica-wait-s 3: short, so a pool with no replica answers 503 soon, but above the gateway's
    # 2 s maximum reconnect backoff (dvd.grpc_options.channel_options): a replica that has just come
    # back may not be reachable for that long, and a call waiting 1 s could miss it (seen once).
    opts = StackOptions(checkpoint=tiny_ckpt, device="cpu", dtype="float32", redis_url=redis.url, log_dir=log_dir,
                        ready_timeout_s=300,
                        gateway_args=["--max-concurrent-requests", "1", "--replica-wait-s", "3"])
    stack = LocalStack(opts).start()
    supervisor = Supervisor(stack, RestartPolicy(base_s=0.2, max_s=1.0)).start()
    yield stack, supervisor, redis, log_dir
    supervisor.stop()
    stack.stop()
    redis.stop()


def _body(image: bytes | None, max_tokens: int = 4, stream: bool = False) -> dict:
    content = [{"type": "text", "text": "Describe it."}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"model": "internvl", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": stream}


def _post(stack: LocalStack, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=kwargs.pop("timeout", 120), **kwargs)


def _aborted(stack: LocalStack) -> float:
    metrics = scrape(stack.proc("language-0").metrics_url)
    return metrics.get('dvd:language_requests_finished_total{finish_reason="abort"}', 0)


def _until(predicate, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _grpc_chat(stack: LocalStack, max_tokens: int = 4):
    request = gateway_pb2.ChatRequest(messages=[gateway_pb2.ChatTurn(role="user", content=[
        gateway_pb2.ChatContentPart(text="hi")])], sampling=common_pb2.SamplingParams(max_tokens=max_tokens))
    channel = grpc.insecure_channel(stack.grpc_target)
    return channel, gateway_pb2_grpc.GatewayStub(channel).Chat(request, timeout=60)


def test_embeddings_lost_with_their_vision_replica_are_encoded_again(env):
    stack, supervisor, redis, log_dir = env
    image = png_bytes(448, 448, seed=901)
    assert _post(stack, _body(image)).status_code == 200  # the gateway now remembers its ref
    # Both copies go: Redis restarts empty, the vision replica dies and the supervisor restarts it.
    redis.stop()
    redis.start()
    vision = stack.proc("vision-0")
    vision.popen.kill()
    _until(lambda: vision.restarts == 1)
    stack.wait_ready([vision])
    reply = _post(stack, _body(image))  # the gateway's cached ref now points at nothing
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] == "length"
    gateway = scrape(stack.proc("gateway").metrics_url)
    assert gateway["dvd:gateway_embeddings_lost_total"] == 1
    language_target = stack.proc("language-0").target
    assert f"ejecting {language_target}" not in (log_dir / "gateway.log").read_text()  # not its fault


def test_a_pool_with_no_replica_answers_503_then_readmits_it(env):
    stack, supervisor, _, _ = env
    language = stack.proc("language-0")
    with supervisor.pause("language-0"):
        language.popen.kill()
        language.popen.wait()
        reply = _post(stack, _body(None))
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert "language pool has no live replica" in error["message"] and error["type"] == "service_unavailable"
        channel, call = _grpc_chat(stack)
        with channel, pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        stack.respawn("language-0")
        stack.wait_ready([language])
    assert _post(stack, _body(None)).status_code == 200  # readmitted by its health


def test_past_the_gateway_bound_a_fast_429_and_a_streaming_client_that_leaves_aborts(env):
    stack, _, _, _ = env
    aborted = _aborted(stack)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{stack.base_url}/chat/completions", json=_body(None, LONG, stream=True)) as held:
            assert held.status_code == 200  # sent after the first token: the request holds the only slot
            refused = _post(stack, _body(None))
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            channel, call = _grpc_chat(stack)
            with channel, pytest.raises(grpc.RpcError) as info:
                list(call)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ("retry-after", "1") in tuple(info.value.trailing_metadata())
        # leaving the `with` closed the connection mid-stream: the engine drops the sequence
    _until(lambda: _aborted(stack) == aborted + 1)
    assert _post(stack, _body(None)).status_code == 200  # the slot is free again


def test_a_non_streaming_client_that_leaves_aborts_its_sequence(env):
    stack, _, _, _ = env
    aborted = _aborted(stack)
    with pytest.raises(httpx.ReadTimeout):
        _post(stack, _body(png_bytes(448, 448, seed=902), LONG), timeout=httpx.Timeout(60, read=3))
    _until(lambda: _aborted(stack) == aborted + 1)


def test_the_request_deadline_header_ends_the_work(env):
    stack, _, _, _ = env
    aborted = _aborted(stack)
    reply = _post(stack, _body(None, LONG), headers={"x-request-timeout-s": "1.5"})
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["type"] == "timeout_error"
    _until(lambda: _aborted(stack) == aborted + 1)  # the language replica saw the same deadline
    bad = _post(stack, _body(None), headers={"x-request-timeout-s": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-request-timeout-s"
