"""rediss:// with AUTH: RedisStore through a TLS terminator (this test's, on loopback, in front of
a real redis-server that requires a password), and the password kept out of refs and errors."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import torch

from dvd.redis_store import RedisStore, StoreUnavailable, redact_url
from dvd.tls import TlsFiles
from dvd.types import Codec, EmbeddingRef
from stack.local_redis import RedisServer
from tests.tls_files import make_pki

pytestmark = pytest.mark.asyncio(loop_scope="session")
PASSWORD = "s3cret-redis-pass"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def tls_terminator(server_tls: TlsFiles, backend_port: int) -> asyncio.Server:
    """TLS (client certificates required) on a free port, plaintext to the backend."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server_tls.cert_file, server_tls.key_file)
    ctx.load_verify_locations(server_tls.ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED

    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


@pytest.fixture
async def rediss(tmp_path):
    pki = make_pki(tmp_path / "pki")
    backend = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    proxy = await tls_terminator(pki.server(), backend.port)
    port = proxy.sockets[0].getsockname()[1]
    yield pki, port
    proxy.close()
    backend.stop()


def _ref() -> EmbeddingRef:
    return EmbeddingRef(key="k1", location="grpc://v:1", tile_tokens=(2,), codec=Codec.FP32, shape=(2, 1),
                        num_bytes=8, checksum="c", model_id="m", access_token="tok")


async def test_rediss_with_auth_and_client_certificate(rediss):
    pki, port = rediss
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
    store = RedisStore(url, ttl_s=30, tls=pki.client())
    assert PASSWORD not in store.location and store.location == f"rediss://127.0.0.1:{port}/0"
    await store.put(_ref(), b"\0" * 8)
    assert (await store.get_ref("k1")).access_token == "tok"
    assert await store.get_blob("k1", "tok") == b"\0" * 8
    assert await store.get_blob("k1", "wrong") is None  # a content key alone reads nothing
    await store.close()
    by_file = RedisStore(f"rediss://127.0.0.1:{port}/0", ttl_s=30, tls=pki.client(), password=PASSWORD)
    assert await by_file.get_blob("k1", "tok") == b"\0" * 8
    await by_file.close()


@pytest.mark.parametrize("case", ["no password", "wrong password", "no client cert", "plaintext"])
async def test_rediss_refusals_never_show_the_password(rediss, case):
    pki, port = rediss
    scheme = "redis" if case == "plaintext" else "rediss"
    password = {"no password": "", "wrong password": "nope-" + PASSWORD}.get(case, PASSWORD)
    tls = pki.client(with_cert=case != "no client cert")
    store = RedisStore(f"{scheme}://127.0.0.1:{port}/0", ttl_s=30, tls=tls, password=password, timeout_s=1)
    with pytest.raises(StoreUnavailable) as info:
        await store.get_ref("k1")
    assert PASSWORD not in str(info.value)
    await store.close()


async def test_redact_url():
    assert redact_url("rediss://user:pw@h:6380/1") == "rediss://h:6380/1"
    assert redact_url("redis://:pw@h/0") == "redis://h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


async def test_the_language_fetcher_reads_through_its_configured_rediss(rediss):
    """A language replica's `--redis-url` with TLS files and a password: refs name the store by its
    credential-free location, and the fetcher reads them through the configured client."""
    from dvd import codec
    from language_service.fetch import EmbeddingFetcher

    pki, port = rediss
    location = f"rediss://127.0.0.1:{port}/0"
    features = torch.arange(6, dtype=torch.float32).view(3, 2)
    blob = codec.encode(features, Codec.FP32)
    ref = EmbeddingRef(key="k2", location=location, tile_tokens=(3,), codec=Codec.FP32, shape=(3, 2),
                       num_bytes=len(blob), checksum=codec.checksum(blob), model_id="m", access_token="tok")
    writer = RedisStore(location, ttl_s=30, tls=pki.client(), password=PASSWORD)
    await writer.put(ref, blob)
    await writer.close()
    fetcher = EmbeddingFetcher(5.0, redis_url=location, redis_tls=pki.client(), redis_password=PASSWORD)
    try:
        assert torch.equal(await fetcher.fetch(ref), features)
    finally:
        await fetcher.close()
