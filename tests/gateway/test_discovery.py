"""Pool discovery. The Kubernetes mode runs the real `kubernetes.aio` client against a local
HTTP server that speaks the API server's list + watch protocol for EndpointSlices (JSON list,
`?watch=true` chunked event stream with ADDED/MODIFIED/DELETED/BOOKMARK, 410 Gone as an ERROR
event for a compacted resourceVersion), so the client's own request building, streaming and
deserialisation are what is tested."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.discovery import DnsDiscovery, KubernetesDiscovery, StaticDiscovery, from_spec
from tests.fake_kube_api import NS, FakeApiServer, api_server, endpoint_slice


@contextlib.asynccontextmanager
async def discovering(discovery):
    changes: asyncio.Queue[frozenset[str]] = asyncio.Queue()
    task = asyncio.create_task(discovery.run(changes.put_nowait))
    try:
        yield changes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_change(changes: asyncio.Queue) -> frozenset[str]:
    return await asyncio.wait_for(changes.get(), timeout=10)


def k8s(cfg, port: int | str = 50051, **kwargs) -> KubernetesDiscovery:
    return KubernetesDiscovery(NS, "dvd-vision", port, api_config=cfg, retry_s=(0.05, 0.2), **kwargs)


VISION_A = [("10.0.0.1", "a", True), ("10.0.0.2", "b", True), ("10.0.0.9", "z", False)]


async def test_initial_list_has_only_ready_endpoints_of_the_service():
    fake = FakeApiServer()
    fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", VISION_A))
    fake.put(endpoint_slice("dvd-language-xyz", "dvd-language", [("10.0.1.1", "l", True)], port=50052))
    async with api_server(fake) as cfg, discovering(k8s(cfg)) as changes:
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.2:50051"}
        await asyncio.wait_for(fake.watching.wait(), timeout=10)
    first = fake.lists()[0]
    assert first["labelSelector"] == "kubernetes.io/service-name=dvd-vision"
    watch = next(q for q in fake.requests if q.get("watch") == "true")
    assert watch["resourceVersion"] == str(fake.resource_version) and watch["allowWatchBookmarks"] == "true"


async def test_watch_follows_added_not_ready_terminating_and_deleted_pods():
    fake = FakeApiServer()
    fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", VISION_A))
    async with api_server(fake) as cfg, discovering(k8s(cfg)) as changes:
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.2:50051"}
        fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", VISION_A + [("10.0.0.3", "c", True)]))
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"}
        fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision",
                                [("10.0.0.1", "a", True), ("10.0.0.2", "b", False), ("10.0.0.3", "c", True)]))
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.3:50051"}
        fake.put(endpoint_slice("dvd-vision-def", "dvd-vision", [("10.0.0.4", "d", True)]))
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.3:50051", "10.0.0.4:50051"}
        fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision",
                                [("10.0.0.1", "a", False, True), ("10.0.0.3", "c", True)]))  # draining
        assert await next_change(changes) == {"10.0.0.3:50051", "10.0.0.4:50051"}
        fake.put(endpoint_slice("dvd-language-xyz", "dvd-language", [("10.0.1.1", "l", True)]))  # not ours
        fake.delete("dvd-vision-abc")
        assert await next_change(changes) == {"10.0.0.4:50051"}
        fake.delete("dvd-vision-def")
        assert await next_change(changes) == frozenset()
    assert len(fake.lists()) == 1


async def test_410_gone_lists_again_and_catches_up():
    fake = FakeApiServer()
    fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", VISION_A))
    async with api_server(fake) as cfg, discovering(k8s(cfg)) as changes:
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.2:50051"}
        await asyncio.wait_for(fake.watching.wait(), timeout=10)
        # The watch drops, and the version the client holds is compacted away before it is back
        # (no await in between: the client cannot reconnect in the meantime).
        fake.drop_watches()
        fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", [("10.0.0.2", "b", True)]))
        fake.put(endpoint_slice("dvd-vision-def", "dvd-vision", [("10.0.0.5", "e", True)]))
        fake.compact()
        assert await next_change(changes) == {"10.0.0.2:50051", "10.0.0.5:50051"}
        fake.put(endpoint_slice("dvd-vision-def", "dvd-vision", [("10.0.0.6", "f", True)]))
        assert await next_change(changes) == {"10.0.0.2:50051", "10.0.0.6:50051"}  # watching again
    assert fake.num_gone == 1
    assert len(fake.lists()) == 2


async def test_dropped_watch_resumes_from_last_version_without_listing():
    fake = FakeApiServer()
    fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", VISION_A))
    async with api_server(fake) as cfg, discovering(k8s(cfg, watch_timeout_s=1)) as changes:
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.2:50051"}
        await asyncio.sleep(1.5)  # one server-side timeout: the client re-watches
        await asyncio.wait_for(fake.watching.wait(), timeout=10)
        fake.drop_watches()
        fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", [("10.0.0.1", "a", True)]))
        assert await next_change(changes) == {"10.0.0.1:50051"}
    watches = [q for q in fake.requests if q.get("watch") == "true"]
    assert len(fake.lists()) == 1 and len(watches) >= 3
    assert all(q["timeoutSeconds"] == "1" for q in watches)


async def test_api_errors_are_retried_and_named_ports_and_dual_stack_resolve():
    fake = FakeApiServer()
    fake.fail_next_lists = 2
    fake.put(endpoint_slice("dvd-vision-v4", "dvd-vision", [("10.0.0.1", "a", True), ("10.0.0.2", "b", True)]))
    fake.put(endpoint_slice("dvd-vision-v6", "dvd-vision", [("fd00::1", "a", True), ("fd00::3", "c", True)],
                            family="IPv6"))
    async with api_server(fake) as cfg, discovering(k8s(cfg, port="grpc")) as changes:
        assert await next_change(changes) == {"10.0.0.1:50051", "10.0.0.2:50051", "[fd00::3]:50051"}
    assert len(fake.lists()) == 3


async def test_unknown_port_name_gives_no_targets():
    fake = FakeApiServer()
    fake.put(endpoint_slice("dvd-vision-abc", "dvd-vision", VISION_A))
    async with api_server(fake) as cfg, discovering(k8s(cfg, port="metrics")) as changes:
        assert await next_change(changes) == frozenset()


async def test_dns_resolves_localhost_and_reports_only_changes():
    calls: list[frozenset[str]] = []
    task = asyncio.create_task(DnsDiscovery("localhost", 50051, interval_s=0.02).run(calls.append))
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(calls) == 1
    assert "127.0.0.1:50051" in calls[0] and calls[0] <= {"127.0.0.1:50051", "[::1]:50051"}


async def test_static_reports_once():
    async with discovering(from_spec("static:10.0.0.1:1,vision-0:2")) as changes:
        assert await next_change(changes) == {"10.0.0.1:1", "vision-0:2"}


def test_from_spec():
    assert from_spec("static:a:1, b:2") == StaticDiscovery(frozenset({"a:1", "b:2"}))
    assert from_spec("dns:dvd-vision.dvd.svc.cluster.local:50051") == DnsDiscovery("dvd-vision.dvd.svc.cluster.local", 50051)
    named, numbered = from_spec("k8s:dvd/dvd-vision:grpc"), from_spec("k8s:prod/dvd-language:50052")
    assert (named.namespace, named.service, named.port) == ("dvd", "dvd-vision", "grpc")
    assert (numbered.namespace, numbered.service, numbered.port) == ("prod", "dvd-language", 50052)
    for bad in ("vision:50051", "static:", "static:a", "dns:name", "dns:name:http", "k8s:svc:50051", "k8s:/svc:1",
                "static:a:70000"):
        with pytest.raises(ValueError):
            from_spec(bad)
