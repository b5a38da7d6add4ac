"""SSRF-safe http(s) fetching for image and video URLs.

Every hop (the first request and each redirect) is checked before anything connects: the
scheme, the host against the allow-list, and every address the host resolves to against the
ranges no client may reach through the gateway (loopback, private, link-local, multicast,
reserved, unspecified, shared, cloud metadata; IPv6 forms that embed an IPv4 address are
unwrapped and checked too). The connection then goes to the address that was checked (a
network backend pinned to it), while the Host header and TLS SNI keep the name, so a DNS answer
that changes between check and connect (rebinding) cannot redirect it.

Errors say what was refused or what limit was hit, never what an internal server answered:
no reason phrase, no body, no remote size, no redirect target.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import httpcore

from dvd.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud metadata endpoints: refused even with allow_private (AWS/GCP/Azure, AWS IPv6, ECS,
# Alibaba, Oracle legacy).
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SAFE = "/?&=%:@!$'()*+,;~-._[]"  # kept as they are in a request target


@dataclass(frozen=True)
class UrlPolicy:
    """What a URL fetch may reach. `allow_hosts`: names (or ".suffix" for a domain and its
    subdomains) exempt from the address check; with `only_allowed_hosts` nothing else is fetched."""

    enabled: bool = True
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    only_allowed_hosts: bool = False
    max_redirects: int = 3
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    content_types: tuple[str, ...] = ("image/", "application/octet-stream")

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith(".") and (host.endswith(h) or host == h[1:])) for h in self.allow_hosts)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    if ip.version == 4:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64 or ip in NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d (deprecated IPv4-compatible)
        return ipaddress.IPv4Address(int(ip))
    return None


def blocked_reason(ip: IPAddress, allow_private: bool = False) -> str | None:
    """Why the gateway must not connect to `ip`, or None when it may."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = blocked_reason(inner, allow_private)
        if reason is not None:
            return reason
    if ip in METADATA or (inner is not None and inner in METADATA):
        return "a cloud metadata address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if allow_private:
        return None
    for attr, what in (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
                       ("is_private", "a private address"), ("is_reserved", "a reserved address")):
        if getattr(ip, attr):
            return what
    if not ip.is_global and inner is None:
        return "a non-public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the OS resolver, without blocking the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class Hop:
    """One checked request: where to connect (`ip`) and what to ask for."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) form
    port: int
    target: str  # path and query, percent-encoded
    ips: tuple[str, ...]  # every address the host resolved to, all checked; tried in order


class UrlGuard:
    """Checks URLs against a `UrlPolicy` and fetches them, hop by hop, from the checked address."""

    def __init__(self, policy: UrlPolicy, resolver: Resolver = system_resolver,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self.resolver = resolver
        self._ssl_context = ssl_context

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The given context, else the system's trust store (loaded once, on the first https fetch)."""
        return self._ssl_context or _default_ssl_context()

    async def check(self, url: str, what: str = "image") -> Hop:
        """The hop for `url`, or InvalidRequest saying why it may not be fetched."""
        if not self.policy.enabled:
            raise InvalidRequest(f"{what} URLs are disabled on this gateway; send the {what} inline (data: URL)")
        scheme, host, port, target = _parse(url, what)
        allowed = self.policy.host_allowed(host)
        if self.policy.only_allowed_hosts and not allowed:
            raise InvalidRequest(f"{what} URL refused: its host is not on this gateway's allow-list")
        addresses = await self._resolve(host, port, what)
        for address in addresses:
            reason = None if allowed else blocked_reason(address, self.policy.allow_private)
            if reason is not None:
                raise InvalidRequest(f"{what} URL refused: its host resolves to {reason}")
        return Hop(url, scheme, host, port, target, tuple(str(a) for a in addresses))

    async def fetch(self, url: str, what: str = "image") -> bytes:
        """GET `url` within the policy's limits; redirects are followed (each hop checked)."""
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                for _ in range(self.policy.max_redirects + 1):
                    hop = await self.check(url, what)
                    status, location, body = await self._get(hop, what)
                    if status not in REDIRECTS:
                        return _ok(status, body, what)
                    if not location:
                        raise InvalidRequest(f"fetching the {what} URL failed: a redirect without a location")
                    url = urljoin(hop.url, location)
        except TimeoutError:
            raise InvalidRequest(f"fetching the {what} URL took longer than {self.policy.timeout_s:g} s") from None
        raise InvalidRequest(f"fetching the {what} URL failed: more than {self.policy.max_redirects} redirects")

    async def _resolve(self, host: str, port: int, what: str) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            found = await self.resolver(host, port)
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        except (OSError, UnicodeError, ValueError):
            addresses = []
        if not addresses:
            raise InvalidRequest(f"{what} URL refused: its host does not resolve")
        return addresses

    async def _get(self, hop: Hop, what: str) -> tuple[int, str, bytes]:
        """(status, Location header, body if 200) of one GET to the pinned address."""
        backend = _PinnedBackend(hop.ips)
        headers = [(b"Host", _host_header(hop)), (b"Accept", b"*/*"), (b"User-Agent", b"dvd-serve")]
        try:
            async with httpcore.AsyncConnectionPool(ssl_context=self.ssl_context, network_backend=backend,
                                                    max_connections=1) as pool:
                url = httpcore.URL(scheme=hop.scheme.encode(), host=hop.host.encode(), port=hop.port,
                                   target=hop.target.encode())
                async with pool.stream("GET", url, headers=headers) as response:
                    if response.status != 200:
                        return response.status, _header(response, b"location"), b""
                    self._check_type(_header(response, b"content-type"), what)
                    return 200, "", await self._read(response, what)
        except httpcore.TimeoutException:
            raise TimeoutError from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, ssl.SSLError,
                OSError) as exc:
            raise InvalidRequest(f"fetching the {what} URL failed: could not connect or read "
                                 f"({type(exc).__name__})") from None

    def _check_type(self, content_type: str, what: str) -> None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media and not media.startswith(self.policy.content_types):
            raise InvalidRequest(f"fetching the {what} URL failed: its content type is not an accepted {what} type")

    async def _read(self, response, what: str) -> bytes:
        length = _header(response, b"content-length")
        if length.isdigit() and int(length) > self.policy.max_bytes:
            raise InvalidRequest(f"the {what} at that URL is larger than the limit of {self.policy.max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise InvalidRequest(f"the {what} at that URL is larger than the limit of {self.policy.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _parse(url: str, what: str) -> tuple[str, str, int, str]:
    """(scheme, ASCII host, port, request target) of an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname.encode("idna").decode("ascii") if parts.hostname else ""
    except (ValueError, UnicodeError):
        raise InvalidRequest(f"{what} URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidRequest(f"{what} URL scheme must be http or https")
    if not host:
        raise InvalidRequest(f"{what} URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"{what} URLs may not carry credentials")
    target = quote(parts.path or "/", safe=_SAFE) + (f"?{quote(parts.query, safe=_SAFE)}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), target


def _ok(status: int, body: bytes, what: str) -> bytes:
    if status != 200:
        raise InvalidRequest(f"fetching the {what} URL failed: the server answered HTTP {status}")
    if not body:
        raise InvalidRequest(f"the {what} at that URL is empty")
    return body


def _host_header(hop: Hop) -> bytes:
    host = f"[{hop.host}]" if ":" in hop.host else hop.host
    default = 443 if hop.scheme == "https" else 80
    return (host if hop.port == default else f"{host}:{hop.port}").encode("ascii")


def _header(response, name: bytes) -> str:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to already-checked addresses (the first that answers), whatever host the
    request names; TLS still verifies and sends SNI for the name (httpcore passes the URL's host
    to start_tls)."""

    def __init__(self, ips: tuple[str, ...]) -> None:
        self.ips = ips
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error: Exception = httpcore.ConnectError("no address")
        for ip in self.ips:
            try:
                return await self._inner.connect_tcp(ip, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
