"""A real gateway process following a pool through the Kubernetes API (a local server that
speaks the EndpointSlice list + watch protocol): a new vision replica is used as soon as its
EndpointSlice appears, and one that turns not-ready stops getting work, without restarting
the gateway."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc

from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from stack.launcher import GATEWAY_SERVICE, LANGUAGE_SERVICE, VISION_SERVICE, _serving, free_port
from tests.conftest import png_bytes
from tests.fake_kube_api import FakeApiServer, api_server, endpoint_slice
from tests.metrics_scrape import scrape

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "%s"}}]
users: [{name: anon, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: anon, namespace: dvd}}]
current-context: fake
"""


def _spawn(module: str, args: list[str], log, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT, env=env)


async def _ready(target: str, service: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    from grpc_health.v1 import health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(int(timeout_s / 0.2)):
            if await asyncio.to_thread(_serving, stub, service):
                return
            assert proc.poll() is None, f"{target} exited"
            await asyncio.sleep(0.2)
    raise TimeoutError(target)


def _chat(target: str, seed: int) -> int:
    request = gateway_pb2.ChatRequest(
        messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=png_bytes(448, 448, seed=seed))),
            gateway_pb2.ChatContentPart(text="?")])],
        sampling=common_pb2.SamplingParams(max_tokens=2))
    with grpc.insecure_channel(target) as channel:
        return list(gateway_pb2_grpc.GatewayStub(channel).Chat(request, timeout=120))[-1].finish_reason


async def _send(target: str, seeds) -> None:
    reasons = await asyncio.gather(*(asyncio.to_thread(_chat, target, s) for s in seeds))
    assert all(r != common_pb2.FINISH_REASON_UNSPECIFIED for r in reasons)


def _encoded(metrics_port: int) -> float:
    return scrape(f"http://127.0.0.1:{metrics_port}/metrics")["dvd:vision_images_encoded_total"]


async def test_gateway_follows_endpointslices(tiny_ckpt, tmp_path):
    fake = FakeApiServer()
    ports = {name: free_port() for name in ("a", "b", "a_m", "b_m", "lang", "rest", "grpc")}
    common = ["--model", str(tiny_ckpt), "--device", "cpu", "--linger-s", "0"]
    procs: list[subprocess.Popen] = []
    log = open(tmp_path / "stack.log", "ab")  # noqa: SIM115
    async with api_server(fake) as cfg:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG % cfg.host)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        try:
            fake.put(endpoint_slice("vision-a", "dvd-vision", [("127.0.0.1", "a", True)], port=ports["a"]))
            procs.append(_spawn("vision_service", common + ["--port", str(ports["a"]), "--metrics-port", str(ports["a_m"])], log))
            procs.append(_spawn("language_service", ["--model", str(tiny_ckpt), "--device", "cpu", "--port",
                                                     str(ports["lang"]), "--metrics-port", "0"], log))
            procs.append(_spawn("gateway", ["--vision", "k8s:dvd/dvd-vision:grpc", "--language", f"127.0.0.1:{ports['lang']}",
                                            "--port", str(ports["rest"]), "--grpc-port", str(ports["grpc"])], log, env))
            await _ready(f"127.0.0.1:{ports['a']}", VISION_SERVICE, procs[0])
            await _ready(f"127.0.0.1:{ports['lang']}", LANGUAGE_SERVICE, procs[1])
            await _ready(f"127.0.0.1:{ports['grpc']}", GATEWAY_SERVICE, procs[2])
            target = f"127.0.0.1:{ports['grpc']}"
            await _send(target, range(8))
            assert _encoded(ports["a_m"]) == 8

            procs.append(_spawn("vision_service", common + ["--port", str(ports["b"]), "--metrics-port", str(ports["b_m"])], log))
            await _ready(f"127.0.0.1:{ports['b']}", VISION_SERVICE, procs[3])
            fake.put(endpoint_slice("vision-b", "dvd-vision", [("127.0.0.1", "b", True)], port=ports["b"]))
            seed = 100
            while _encoded(ports["b_m"]) == 0:  # the new replica gets work once the watch delivers it
                assert seed < 400, "the gateway never used the new replica"
                await _send(target, range(seed, seed + 4))
                seed += 4

            fake.put(endpoint_slice("vision-a", "dvd-vision", [("127.0.0.1", "a", False)], port=ports["a"]))
            await asyncio.sleep(1.0)  # the watch event reaches the gateway
            before = _encoded(ports["a_m"])
            await _send(target, range(1000, 1012))
            assert _encoded(ports["a_m"]) == before  # not-ready: no more work
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
            log.close()
