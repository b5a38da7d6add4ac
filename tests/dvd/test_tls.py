"""TLS and mTLS on a real gRPC server (`GrpcService`, which every service binds through), and
the plaintext health-only port for Kubernetes probes."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dvd.grpc_server import GrpcService
from dvd.tls import TlsFiles, aio_channel
from tests.tls_files import make_pki

pytestmark = pytest.mark.asyncio(loop_scope="session")
SERVICE = "dvd.v1.Test"


async def _check(target: str, tls: TlsFiles | None) -> grpc.StatusCode:
    async with aio_channel(target, tls, []) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_matrix(pki, mutual):
    service = GrpcService([SERVICE])
    port = service.bind("127.0.0.1", 0, pki.server(mutual))
    health_port = service.bind_health("127.0.0.1", 0)
    await service.start()
    target = f"127.0.0.1:{port}"
    try:
        assert await _check(target, pki.client()) == grpc.StatusCode.OK
        assert await _check(target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
        assert await _check(target, TlsFiles(ca_file=pki.stranger_cert)) == grpc.StatusCode.UNAVAILABLE  # wrong CA
        no_cert = await _check(target, pki.client(with_cert=False))
        stranger = await _check(target, pki.stranger())
        assert (no_cert, stranger) == ((grpc.StatusCode.UNAVAILABLE,) * 2 if mutual else (grpc.StatusCode.OK,) * 2)
        assert await _check(f"127.0.0.1:{health_port}", None) == grpc.StatusCode.OK  # probes: plaintext health
    finally:
        await service.server.stop(0)


async def test_cert_without_key_is_a_config_error(pki):
    with pytest.raises(ValueError, match="both or neither"):
        TlsFiles(cert_file=pki.cert)
    with pytest.raises(ValueError, match="does not exist"):
        TlsFiles(ca_file="/nonexistent/ca.pem")
