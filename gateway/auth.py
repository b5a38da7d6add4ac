"""API keys and tenants for both front ends.

A key maps to a tenant (configured, or derived from the key by hashing it); the tenant's cache
scope enters every content key, so cached embeddings never cross tenants. Keys are compared in
constant time (hmac.compare_digest over SHA-256 digests, every key checked) and never logged or
echoed: errors say only that the key is missing or not valid."""

from __future__ import annotations

import hashlib
import hmac

from dvd.errors import Unauthenticated


def parse_keys(text: str) -> tuple[tuple[str, str], ...]:
    """Lines (or commas) of `KEY` or `KEY TENANT` (also `KEY:TENANT`); `#` starts a comment.
    A key without a tenant is its own tenant (named by a hash of it)."""
    keys = []
    for line in text.replace(",", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, tenant = line.replace(":", " ", 1).partition(" ")
        key, tenant = key.strip(), tenant.strip()
        keys.append((key, tenant or "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]))
    return tuple(keys)


class Authenticator:
    """Maps an `Authorization: Bearer KEY` value (REST header or gRPC metadata) to a tenant."""

    def __init__(self, keys: tuple[tuple[str, str], ...], tenant_header: str = "") -> None:
        self._digests = [(hashlib.sha256(k.encode()).digest(), tenant) for k, tenant in keys]
        self.tenant_header = tenant_header.lower()

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def tenant(self, authorization: str | None, header_tenant: str | None = None) -> str:
        """The caller's tenant ("" when keys are off and no trusted header is configured);
        raises Unauthenticated when keys are on and `authorization` holds no known key."""
        tenant = self._key_tenant(authorization) if self.enabled else ""
        if self.tenant_header and header_tenant:
            tenant = f"{tenant}/{header_tenant}" if tenant else header_tenant
        return tenant

    def _key_tenant(self, authorization: str | None) -> str:
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(key.strip().encode()).digest()
        found = ""
        for known, tenant in self._digests:  # all of them, so the time does not say which matched
            if hmac.compare_digest(digest, known):
                found = tenant
        if not found:
            raise Unauthenticated("invalid API key")
        return found
