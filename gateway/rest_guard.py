"""The REST edge's checks that come before any route runs, as one ASGI middleware: the API key
(401), the body size cap (413, counted as the body arrives, so a lying or absent
Content-Length changes nothing), and the caller's tenant, left in `request.state.tenant`."""

from __future__ import annotations

import json

from dvd.errors import PayloadTooLarge, Unauthenticated, kind_of
from gateway.auth import Authenticator
from gateway.protocol import error_body

# Never behind a key: the schema (no secrets in it) and its viewer.
ALWAYS_OPEN = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class RestGuard:
    """ASGI middleware: authenticate, cap the body, record the tenant; errors in OpenAI JSON."""

    def __init__(self, app, auth: Authenticator, max_body_bytes: int, open_paths: frozenset[str]) -> None:
        self.app = app
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.open_paths = ALWAYS_OPEN | open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            tenant = "" if scope["path"] in self.open_paths else self.auth.tenant(
                headers.get("authorization"), headers.get(self.auth.tenant_header) if self.auth.tenant_header else None)
            body = await self._body(headers, receive)
        except (Unauthenticated, PayloadTooLarge) as exc:
            await _send_error(send, exc)
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, _replay(body, receive), send)

    async def _body(self, headers: dict[str, str], receive) -> bytes:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that hands out the buffered body once, then defers to the real one (so
    streaming responses still see the client disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send, exc: Unauthenticated | PayloadTooLarge) -> None:
    kind = kind_of(exc)
    payload = json.dumps(error_body(exc.message, kind.openai_type, kind.http_status)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if isinstance(exc, Unauthenticated):
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": kind.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
