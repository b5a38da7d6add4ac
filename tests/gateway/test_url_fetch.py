"""The guard fetching for real, from HTTP and HTTPS servers this test starts on 127.0.0.1:
allowed by --allow-private-urls or an allow-list, refused without them (before the server
sees a request), redirects checked hop by hop, and the limits."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from aiohttp import web

from dvd.errors import InvalidRequest
from gateway.url_guard import UrlGuard, UrlPolicy
from tests.conftest import png_bytes

PNG = png_bytes(32, 32)
# The servers (fixtures) and the tests share one event loop.
pytestmark = pytest.mark.asyncio(loop_scope="session")


class Origin:
    """An aiohttp app on 127.0.0.1 that counts the requests it gets."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.other = ""  # base URL of another server, for cross-server redirects
        app = web.Application()
        app.router.add_get("/{name}", self.handle)
        self.app = app
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append(name)
        if name == "img.png":
            return web.Response(body=PNG, content_type="image/png")
        if name == "to-other":
            raise web.HTTPFound(f"{self.other}/img.png")
        if name == "loop":
            raise web.HTTPFound("/loop")
        if name == "page.html":
            return web.Response(text="<html>secret admin page</html>", content_type="text/html")
        if name == "big.png":
            return web.Response(body=b"\0" * 4096, content_type="image/png")
        if name == "slow.png":
            await asyncio.sleep(1.5)
        return web.Response(status=404, text="internal detail: /var/lib/secret")

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Origin:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def origin():
    server = await Origin().start()
    yield server
    await server.stop()


@pytest.fixture
async def other():
    server = await Origin().start()
    yield server
    await server.stop()


async def test_private_urls_are_refused_before_any_request(origin):
    guard = UrlGuard(UrlPolicy())
    for url in (f"http://127.0.0.1:{origin.port}/img.png", f"http://localhost:{origin.port}/img.png"):
        with pytest.raises(InvalidRequest, match="refused"):
            await guard.fetch(url)
    assert origin.hits == []


async def test_allow_private_fetches(origin):
    guard = UrlGuard(UrlPolicy(allow_private=True))
    assert await guard.fetch(f"http://127.0.0.1:{origin.port}/img.png") == PNG


async def test_allow_listed_host_fetches_but_its_redirect_to_a_private_address_is_refused(origin, other):
    """localhost is allowed; its redirect to 127.0.0.1 (another server) is a new hop, not allowed."""
    origin.other = f"http://127.0.0.1:{other.port}"
    guard = UrlGuard(UrlPolicy(allow_hosts=("localhost",)))
    assert await guard.fetch(f"http://localhost:{origin.port}/img.png") == PNG
    with pytest.raises(InvalidRequest, match="refused") as info:
        await guard.fetch(f"http://localhost:{origin.port}/to-other")
    assert str(other.port) not in info.value.message  # the redirect target is not echoed
    assert other.hits == []


async def test_redirect_between_allowed_servers_is_followed(origin, other):
    origin.other = f"http://127.0.0.1:{other.port}"
    guard = UrlGuard(UrlPolicy(allow_private=True))
    assert await guard.fetch(f"http://127.0.0.1:{origin.port}/to-other") == PNG
    assert other.hits == ["img.png"]


@pytest.mark.parametrize(("name", "policy", "expected"), [
    ("loop", {}, "more than 2 redirects"),
    ("page.html", {}, "content type"),
    ("big.png", {"max_bytes": 1000}, "larger than the limit of 1000 bytes"),
    ("slow.png", {"timeout_s": 0.3}, "longer than 0.3 s"),
    ("missing.png", {}, "HTTP 404"),
])
async def test_limits(origin, name, policy, expected):
    guard = UrlGuard(UrlPolicy(allow_private=True, max_redirects=2, **policy))
    with pytest.raises(InvalidRequest) as info:
        await guard.fetch(f"http://127.0.0.1:{origin.port}/{name}")
    message = info.value.message
    assert expected in message
    for leak in ("secret", "internal detail", "4096", "Not Found"):
        assert leak not in message


async def test_https_through_the_pinned_address_verifies_the_name():
    """The connection goes to the checked IP while TLS verifies (and SNI names) the host."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = await Origin().start(server_ctx)
    try:
        guard = UrlGuard(UrlPolicy(allow_hosts=("localhost",)), ssl_context=client_ctx)
        assert await guard.fetch(f"https://localhost:{server.port}/img.png") == PNG
        untrusted = UrlGuard(UrlPolicy(allow_hosts=("localhost",)))  # the system roots: no trustme CA
        with pytest.raises(InvalidRequest, match="could not connect"):
            await untrusted.fetch(f"https://localhost:{server.port}/img.png")
    finally:
        await server.stop()
