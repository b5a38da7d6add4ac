"""A locked-down stack, end to end: mTLS on every internal hop and TLS on the public ports,
API keys with tenants, an allow-listed image host, small body and message caps. Clients are
the real ones (httpx, grpc) on loopback."""

from __future__ import annotations

import asyncio
import ssl
import threading

import grpc
import httpx
import pytest
from aiohttp import web

from dvd.cache_key import content_key, tenant_scope
from dvd.tls import sync_channel
from dvd.types import TilingOptions, VirOptions
from protos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, vision_pb2, vision_pb2_grpc
from stack.launcher import LocalStack, StackOptions
from tests.conftest import png_bytes
from tests.integration.cases import data_url
from tests.tls_files import make_pki

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-9876543210"}
PICTURE = png_bytes(448, 448, color=(10, 200, 90))


class ImageHost:
    """An image server on 127.0.0.1 (own thread and loop): /img.png, and /to-private, a redirect
    to the gateway's own /metrics on 127.0.0.1."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.redirect_to = ""
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/{name}", self._handle)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.match_info["name"])
        if request.match_info["name"] == "to-private":
            raise web.HTTPFound(self.redirect_to)
        return web.Response(body=PICTURE, content_type="image/png")


@pytest.fixture(scope="module")
def secure(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    pki = make_pki(root / "pki")
    keys = root / "keys.txt"
    keys.write_text("".join(f"{key} {tenant}\n" for tenant, key in KEYS.items()))
    host = ImageHost()
    opts = StackOptions(checkpoint=tiny_ckpt, device="cpu", dtype="float32", log_dir=root / "logs", ready_timeout_s=300,
                        tls_ca=pki.ca, tls_cert=pki.cert, tls_key=pki.key,
                        gateway_args=["--api-keys-file", str(keys), "--allow-url-hosts", "localhost",
                                      "--max-body-mib", "1", "--max-grpc-message-mib", "1"])
    with LocalStack(opts) as stack:
        host.redirect_to = f"http://127.0.0.1:{stack.rest_port}/metrics"
        yield stack, pki, host, root / "logs"


def _client(pki, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(verify=ssl.create_default_context(cafile=pki.ca), headers=headers, timeout=120)


def _chat(url: str, **extra) -> dict:
    return {"model": "internvl", "max_tokens": 2, "temperature": 0, **extra, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]}


def test_rest_keys(secure):
    stack, pki, _, _ = secure
    for key, status in ((None, 401), ("sk-wrong", 401), (KEYS["alice"], 200)):
        with _client(pki, key) as client:
            reply = client.get(f"{stack.base_url}/models")
            assert reply.status_code == status, reply.text
            if status == 401:
                assert reply.json()["error"]["type"] == "authentication_error"
                assert reply.headers["www-authenticate"] == "Bearer"
            assert client.get(f"{stack.base_url.removesuffix('/v1')}/health").status_code == 200  # open: probes


def test_grpc_keys_and_public_message_cap(secure):
    stack, pki, _, _ = secure
    ok = gateway_pb2.ChatRequest(messages=[gateway_pb2.ChatTurn(role="user", content=[
        gateway_pb2.ChatContentPart(text="hi")])], sampling=common_pb2.SamplingParams(max_tokens=2))
    with sync_channel(stack.grpc_target, pki.client(with_cert=False)) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for metadata in ((), (("authorization", "Bearer sk-wrong"),)):
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Chat(ok, metadata=metadata, timeout=60))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "sk-" not in info.value.details()
        good = (("authorization", f"Bearer {KEYS['bob']}"),)
        assert list(stub.Chat(ok, metadata=good, timeout=60))[-1].finish_reason
        huge = gateway_pb2.ChatRequest(messages=[gateway_pb2.ChatTurn(role="user", content=[
            gateway_pb2.ChatContentPart(image=gateway_pb2.ImageInput(data=b"\0" * (2 * 1024 * 1024)))])])
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(huge, metadata=good, timeout=60))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_body_cap_is_413(secure):
    stack, pki, _, _ = secure
    with _client(pki, KEYS["alice"]) as client:
        reply = client.post(f"{stack.base_url}/chat/completions", json=_chat("data:image/png;base64," + "A" * 2_000_000))
    assert reply.status_code == 413 and reply.json()["error"]["message"]


def test_cache_hits_never_cross_tenants(secure):
    """Neither the embedding cache nor the language replica's KV prefix cache: the same image and
    prompt from another tenant are encoded and prefilled again."""
    stack, pki, _, _ = secure
    body = _chat(data_url(PICTURE))

    def cached(key: str) -> tuple[int, int]:
        with _client(pki, key) as client:
            reply = client.post(f"{stack.base_url}/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        return reply.json()["dvd"]["cached_images"], usage["prompt_tokens_details"]["cached_tokens"]

    assert cached(KEYS["alice"]) == (0, 0)
    images, tokens = cached(KEYS["alice"])
    assert images == 1 and tokens > 256  # the image's 256 positions and the template around them
    assert cached(KEYS["bob"]) == (0, 0)


def test_fetch_embedding_needs_the_refs_token(secure):
    """A vision replica over mTLS: a content key computed from the image alone reads nothing."""
    stack, pki, _, _ = secure
    with sync_channel(stack.vision_targets[0], pki.client()) as channel:
        vision = vision_pb2_grpc.VisionEncoderStub(channel)
        scope = tenant_scope("alice")
        ref = vision.Encode(vision_pb2.EncodeRequest(image=PICTURE, cache_scope=scope), timeout=120).ref
        info = vision.Info(vision_pb2.VisionInfoRequest(), timeout=30)
        key = content_key(PICTURE, TilingOptions(), VirOptions(), None, info.cache_namespace, None, scope)
        assert key == ref.key and ref.access_token
        for token in ("", "guess"):
            with pytest.raises(grpc.RpcError) as err:
                list(vision.FetchEmbedding(vision_pb2.FetchEmbeddingRequest(key=key, access_token=token), timeout=30))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        chunks = list(vision.FetchEmbedding(vision_pb2.FetchEmbeddingRequest(key=key, access_token=ref.access_token),
                                            timeout=30))
        assert sum(len(c.data) for c in chunks) == ref.num_bytes
    with grpc.insecure_channel(stack.vision_targets[0]) as plain:  # no TLS: no answer
        with pytest.raises(grpc.RpcError) as err:
            vision_pb2_grpc.VisionEncoderStub(plain).Info(vision_pb2.VisionInfoRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_url_fetching_allow_list_and_redirects(secure):
    stack, pki, host, _ = secure
    with _client(pki, KEYS["alice"]) as client:
        post = lambda url: client.post(f"{stack.base_url}/chat/completions", json=_chat(url))  # noqa: E731
        assert post(f"http://localhost:{host.port}/img.png").status_code == 200  # allow-listed
        for url in (f"http://127.0.0.1:{stack.rest_port}/metrics", f"http://localhost:{host.port}/to-private",
                    "http://169.254.169.254/latest/meta-data/", "http://[::1"):
            reply = post(url)
            assert reply.status_code == 400, (url, reply.text)
            assert "dvd_" not in reply.text and "bytes" not in reply.json()["error"]["message"]
    assert host.hits == ["img.png", "to-private"]


def test_no_key_or_password_in_any_log(secure):
    _, _, _, logs = secure
    text = "".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
    assert text and not any(key in text for key in KEYS.values())
