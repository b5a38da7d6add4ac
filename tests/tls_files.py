"""Throwaway PKI for the TLS tests (trustme): a CA, a leaf for localhost / 127.0.0.1 that serves
and presents itself as a client, and a stranger's leaf from another CA, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from dvd.tls import TlsFiles


@dataclass(frozen=True)
class Pki:
    ca: str
    cert: str
    key: str
    stranger_cert: str
    stranger_key: str

    def server(self, mutual: bool = True) -> TlsFiles:
        return TlsFiles(self.cert, self.key, self.ca if mutual else "")

    def client(self, with_cert: bool = True) -> TlsFiles:
        return TlsFiles(self.cert if with_cert else "", self.key if with_cert else "", self.ca)

    def stranger(self) -> TlsFiles:
        return TlsFiles(self.stranger_cert, self.stranger_key, self.ca)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    leaf, stranger = ca.issue_cert("localhost", "127.0.0.1"), other.issue_cert("localhost", "127.0.0.1")
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key", "stranger_cert", "stranger_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    stranger.cert_chain_pems[0].write_to_path(paths["stranger_cert"])
    stranger.private_key_pem.write_to_path(paths["stranger_key"])
    return Pki(**paths)
