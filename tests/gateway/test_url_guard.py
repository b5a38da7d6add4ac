"""The SSRF guard's decisions, with a stubbed resolver: nothing here opens a socket (the
network backend is replaced by one that fails the test if anything tries to connect)."""

from __future__ import annotations

import asyncio
import ipaddress

import httpcore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvd.errors import InvalidRequest
from gateway.url_guard import UrlGuard, UrlPolicy, blocked_reason, embedded_ipv4, system_resolver

BLOCKED = [
    "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.1.1",
    "100.64.0.1", "100.100.100.200", "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255", "198.18.0.1", "192.0.2.1", "192.0.0.192",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "::ffff:10.1.2.3", "::127.0.0.1", "2002:7f00:1::", "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:db8::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e"]


LOOP = asyncio.new_event_loop()  # one loop for the module: asyncio.run per example costs ms


def run(coro):
    return LOOP.run_until_complete(coro)


def stub_resolver(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("unknown host")
        return table[host]

    return resolve


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    async def refuse(*args, **kwargs):
        raise AssertionError("the guard tried to connect")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", refuse)


def check(url: str, table: dict[str, list[str]] | None = None, **policy) -> str:
    """'ok' or the refusal message."""
    guard = UrlGuard(UrlPolicy(**policy), stub_resolver(table or {}))
    try:
        run(guard.check(url))
    except InvalidRequest as exc:
        return exc.message
    return "ok"


@pytest.mark.parametrize("address", BLOCKED)
def test_internal_addresses_are_refused_by_name_and_literal(address):
    assert "refused" in check("http://evil.example/x.png", {"evil.example": [address]})
    literal = f"[{address}]" if ":" in address else address
    assert "refused" in check(f"http://{literal}:8080/x.png")


@pytest.mark.parametrize("address", BLOCKED)
def test_fetch_never_connects_to_an_internal_address(address):
    guard = UrlGuard(UrlPolicy(), stub_resolver({"evil.example": [address]}))
    with pytest.raises(InvalidRequest, match="refused"):
        run(guard.fetch("https://evil.example/x.png"))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert check("https://cdn.example/x.png", {"cdn.example": [address]}) == "ok"


def test_one_internal_answer_among_public_ones_refuses():
    assert "private" in check("http://mixed.example/", {"mixed.example": ["8.8.8.8", "10.0.0.7"]})


def test_allow_private_still_refuses_metadata():
    assert check("http://127.0.0.1/x", allow_private=True) == "ok"
    assert check("http://[fd12::1]/x", allow_private=True) == "ok"
    for metadata in ("169.254.169.254", "[fd00:ec2::254]", "[::ffff:169.254.169.254]", "100.100.100.200"):
        assert "metadata" in check(f"http://{metadata}/latest/meta-data/", allow_private=True)


def test_allow_listed_hosts_may_be_internal():
    table = {"images.svc": ["10.0.0.5"], "a.images.corp": ["10.1.1.1"], "other.svc": ["10.0.0.6"]}
    assert check("http://images.svc/x", table, allow_hosts=("images.svc",)) == "ok"
    assert check("http://a.images.corp/x", table, allow_hosts=(".images.corp",)) == "ok"
    assert "private" in check("http://other.svc/x", table, allow_hosts=("images.svc",))
    assert "allow-list" in check("http://cdn.example/x", {"cdn.example": ["8.8.8.8"]},
                                 allow_hosts=("images.svc",), only_allowed_hosts=True)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO",
                                 "javascript:alert(1)", "dict://127.0.0.1:11211/", "http://[::1", "http://",
                                 "http://user:pw@cdn.example/x", "http://a..b/x", "http://" + "a" * 300 + ".com/",
                                 "http://cdn.example:99999/x", "http://unresolvable.example/x"])
def test_malformed_or_unsupported_urls_are_400s(url):
    message = check(url, {"cdn.example": ["8.8.8.8"]})
    assert message != "ok"
    assert "[::1" not in message and "pw" not in message  # nothing of the URL echoed back


def test_fetching_can_be_switched_off():
    assert "disabled" in check("https://cdn.example/x", {"cdn.example": ["8.8.8.8"]}, enabled=False)


@pytest.mark.parametrize("host", ["localhost", "2130706433", "0x7f.1", "127.1", "0177.0.0.1"])
def test_system_resolver_forms_of_loopback_are_refused(host):
    """Numeric shorthands and /etc/hosts names resolve locally (no DNS traffic) to loopback."""
    guard = UrlGuard(UrlPolicy(), system_resolver)
    with pytest.raises(InvalidRequest, match="refused"):
        run(guard.check(f"http://{host}/x"))


@given(st.integers(min_value=0, max_value=2**32 - 1))
@settings(max_examples=400, deadline=None)
def test_every_ipv6_wrapping_of_a_blocked_ipv4_is_blocked(value):
    ip4 = ipaddress.IPv4Address(value)
    wrapped = [ipaddress.IPv6Address(f"::ffff:{ip4}"), ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | value),
               ipaddress.IPv6Address((0x2002 << 112) | (value << 80))]
    for ip6 in wrapped:
        assert embedded_ipv4(ip6) == ip4
        if blocked_reason(ip4) is not None:
            assert blocked_reason(ip6) is not None, (ip4, ip6)


@given(st.integers(min_value=0, max_value=2**32 - 1))
@settings(max_examples=400, deadline=None)
def test_an_ipv4_passes_only_when_it_is_global_unicast(value):
    ip = ipaddress.IPv4Address(value)
    assert (blocked_reason(ip) is None) == (ip.is_global and not ip.is_multicast and ip not in
                                            {ipaddress.ip_address("100.100.100.200")})


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_any_text_is_refused_or_checked_never_crashes(text):
    guard = UrlGuard(UrlPolicy(), stub_resolver({}))

    async def all_forms() -> None:
        for url in (text, "http://" + text, "https://" + text + "/x.png"):
            try:
                await guard.check(url)
            except InvalidRequest:
                pass

    run(all_forms())
