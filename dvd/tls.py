"""TLS for every gRPC hop and for Redis, configured by file paths (PEM).

One `TlsFiles` describes one end: a server's certificate and key (plus, for mTLS, the CA its
clients' certificates must chain to), or a client's CA bundle (plus, for mTLS, its own
certificate and key). The files are read when credentials are made, at startup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    """PEM paths; all empty: plaintext. Server: cert + key, and ca = client CA (mTLS).
    Client: ca = server CA, and cert + key = client certificate (mTLS)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    # Client: the name to verify the server's certificate against instead of the target's host
    # (pods are dialled by IP; their certificate names the service).
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a TLS certificate and its key go together: give both or neither")
        for path in (self.cert_file, self.key_file, self.ca_file):
            if path and not Path(path).is_file():
                raise ValueError(f"TLS file {path!r} does not exist")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.ca_file)

    def _read(self, path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server TLS; with a CA, clients must present a certificate it signed (mTLS)."""
        if not self.cert_file:
            raise ValueError("a TLS server needs a certificate and key")
        ca = self._read(self.ca_file)
        return grpc.ssl_server_credentials([(self._read(self.key_file), self._read(self.cert_file))],
                                           root_certificates=ca, require_client_auth=ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client TLS: verify the server against the CA (else the system roots); present the
        client certificate when one is configured (mTLS)."""
        return grpc.ssl_channel_credentials(root_certificates=self._read(self.ca_file),
                                            private_key=self._read(self.key_file),
                                            certificate_chain=self._read(self.cert_file))


    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def aio_channel(target: str, tls: TlsFiles | None, options: list) -> grpc.aio.Channel:
    """An asyncio channel to `target`: TLS when `tls` is enabled, else plaintext."""
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options + tls.channel_options())
    return grpc.aio.insecure_channel(target, options=options)


def sync_channel(target: str, tls: TlsFiles | None) -> grpc.Channel:
    """A blocking channel to `target` (launchers and tests waiting for readiness)."""
    if tls is not None and tls.enabled:
        return grpc.secure_channel(target, tls.channel_credentials(), options=tls.channel_options())
    return grpc.insecure_channel(target)


def redis_tls_kwargs(tls: TlsFiles | None) -> dict:
    """redis-py connection arguments for a rediss:// URL (certificate checked against the CA)."""
    if tls is None or not tls.enabled:
        return {}
    kwargs: dict = {"ssl_cert_reqs": "required"}
    if tls.ca_file:
        kwargs["ssl_ca_certs"] = tls.ca_file
    if tls.cert_file:
        kwargs.update(ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file)
    return kwargs
