"""Pool replica discovery: the live set of `host:port` targets behind a pool, from a static list,
a DNS name re-resolved every few seconds (a headless Service), or the Kubernetes API (the
EndpointSlices of a Service, listed then watched). The gateway's pools follow it as replicas
come and go.

Spec strings (what `from_spec` parses, e.g. from a gateway flag):
    static:HOST:PORT[,HOST:PORT...]    a fixed list
    dns:NAME:PORT                      every address NAME resolves to, re-resolved every 5 s
    k8s:NAMESPACE/SERVICE:PORT         ready endpoints of SERVICE; PORT is a number or the
                                       Service port's name (resolved per EndpointSlice)

The Kubernetes watch uses the official client's asyncio API (`kubernetes.aio`, kubernetes>=37,
the `k8s` extra): it runs on the gateway's event loop, is cancelled like any task, and needs no
thread per watch (the sync client would block a thread in every read and could not be
interrupted on shutdown).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

OnChange = Callable[[frozenset[str]], None]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Dual-stack Services have one EndpointSlice per address family; a pod in both is used once,
# by its IPv4 address. Later families in this order win.
_FAMILY_ORDER = ("FQDN", "IPv6", "IPv4")


class Discovery(Protocol):
    async def run(self, on_change: OnChange) -> None:
        """Call `on_change` with the whole target set once known and again on every change.
        Runs until cancelled; transient failures keep the last set and are retried."""


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str) -> tuple[str, str]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, port


def _port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def from_spec(spec: str) -> Discovery:
    """`static:h1:p,h2:p` | `dns:name:port` | `k8s:namespace/service:port` (see the module doc)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "static":
        targets = [t.strip() for t in rest.split(",") if t.strip()]
        for target in targets:
            _port_number(_split_host_port(target)[1])
        if not targets:
            raise ValueError(f"static discovery needs at least one HOST:PORT: {spec!r}")
        return StaticDiscovery(frozenset(targets))
    if scheme == "dns":
        name, port = _split_host_port(rest)
        return DnsDiscovery(name, _port_number(port))
    if scheme == "k8s":
        where, port = _split_host_port(rest)
        namespace, slash, service = where.partition("/")
        if not slash or not namespace or not service:
            raise ValueError(f"expected k8s:NAMESPACE/SERVICE:PORT, got {spec!r}")
        if importlib.util.find_spec("kubernetes") is None:
            raise ValueError(f"{spec!r} needs the Kubernetes client: pip install 'dvd-serve[k8s]'")
        return KubernetesDiscovery(namespace, service, int(port) if port.isdigit() else port)
    raise ValueError(f"unknown discovery spec {spec!r}: expected static:, dns: or k8s:")


@dataclass(frozen=True)
class StaticDiscovery:
    targets: frozenset[str]

    async def run(self, on_change: OnChange) -> None:
        on_change(self.targets)
        await asyncio.Event().wait()


@dataclass(frozen=True)
class DnsDiscovery:
    """Every A/AAAA record of `name` (a headless Service lists one per ready pod)."""

    name: str
    port: int
    interval_s: float = 5.0

    async def run(self, on_change: OnChange) -> None:
        last: frozenset[str] | None = None
        while True:
            targets = await self.resolve()
            if targets is not None and targets != last:
                on_change(targets)
                last = targets
            await asyncio.sleep(self.interval_s)

    async def resolve(self) -> frozenset[str] | None:
        """The current addresses; empty when the name does not exist (a headless Service with no
        ready pod answers NXDOMAIN); None on a transient failure (the last set is kept)."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return frozenset()
            log.warning("resolving %s failed (%s); keeping the last targets", self.name, err)
            return None
        return frozenset(join_host_port(info[4][0], self.port) for info in infos)


def slice_targets(endpoint_slice, port: int | str) -> dict[str, str]:
    """{endpoint key: host:port} for the ready, non-terminating endpoints of one EndpointSlice
    (a `kubernetes.aio.client.V1EndpointSlice`). The key is the pod's uid, so the same pod seen
    in an IPv4 and an IPv6 slice counts once."""
    if isinstance(port, str):
        named = [p.port for p in endpoint_slice.ports or [] if p.name == port and p.port]
        if not named:
            return {}
        port = named[0]
    targets = {}
    for endpoint in endpoint_slice.endpoints or []:
        conditions = endpoint.conditions
        # The API says a missing `ready` means ready; terminating pods are draining.
        if conditions is not None and (conditions.ready is False or conditions.terminating):
            continue
        if not endpoint.addresses:
            continue
        ref = endpoint.target_ref
        key = ref.uid if ref is not None and ref.uid else endpoint.addresses[0]
        targets[key] = join_host_port(endpoint.addresses[0], port)  # addresses are fungible: use the first
    return targets


@dataclass
class _SliceState:
    """The EndpointSlices of one Service as last listed or watched."""

    port: int | str
    slices: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # name -> (family, targets)
    resource_version: str | None = None
    published: frozenset[str] | None = None

    def reset(self, items, resource_version: str) -> None:
        self.slices = {}
        for item in items:
            self.apply("ADDED", item)
        self.resource_version = resource_version

    def apply(self, event_type: str, item) -> None:
        name = item.metadata.name
        if event_type == "DELETED":
            self.slices.pop(name, None)
        else:
            self.slices[name] = (item.address_type, slice_targets(item, self.port))

    def targets(self) -> frozenset[str]:
        merged: dict[str, str] = {}
        by_family = sorted(self.slices.values(), key=lambda s: _FAMILY_ORDER.index(s[0]) if s[0] in _FAMILY_ORDER else -1)
        for _, targets in by_family:
            merged.update(targets)
        return frozenset(merged.values())

    def take_change(self) -> frozenset[str] | None:
        """The target set when it differs from the one taken last, else None."""
        targets = self.targets()
        if targets == self.published:
            return None
        self.published = targets
        return targets


class KubernetesDiscovery:
    """Ready endpoints of one Service: list its EndpointSlices, then watch from the list's
    resourceVersion. A watch that ends (server timeout, disconnect) resumes from the last seen
    resourceVersion; 410 Gone (that version was compacted away) starts over with a fresh list.

    `api_config` (a `kubernetes.aio.client.Configuration`) defaults to the pod's service account,
    or to ~/.kube/config outside a cluster. The account needs get/list/watch on
    discovery.k8s.io endpointslices in `namespace`."""

    def __init__(self, namespace: str, service: str, port: int | str, api_config=None,
                 watch_timeout_s: int = 240, retry_s: tuple[float, float] = (0.5, 30.0)) -> None:
        self.namespace = namespace
        self.service = service
        self.port = port
        self.api_config = api_config
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s

    async def run(self, on_change: OnChange) -> None:
        from kubernetes.aio import client

        state = _SliceState(self.port)

        def publish() -> None:
            targets = state.take_change()
            if targets is not None:
                on_change(targets)

        async with client.ApiClient(await self._config()) as api_client:
            api = client.DiscoveryV1Api(api_client)
            delay_s = self.retry_s[0]
            while True:
                try:
                    if state.resource_version is None:
                        await self._list(api, state)
                        publish()
                    await self._watch(api, state, publish)
                    delay_s = self.retry_s[0]
                except client.ApiException as err:
                    if err.status == 410:
                        log.info("endpointslices of %s/%s: %s; listing again", self.namespace, self.service, err.reason)
                        state.resource_version = None
                        continue
                    delay_s = await self._backoff(err, delay_s)
                except Exception as err:  # noqa: BLE001 - disconnects, timeouts, bad payloads: retry, keep the set
                    delay_s = await self._backoff(err, delay_s)

    async def _list(self, api, state: _SliceState) -> None:
        reply = await api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"{SERVICE_NAME_LABEL}={self.service}", _request_timeout=30.0)
        state.reset(reply.items, reply.metadata.resource_version)

    async def _watch(self, api, state: _SliceState, publish: Callable[[], None]) -> None:
        from kubernetes.aio import watch

        # timeout_seconds makes the server end the watch (the client then resumes it), so a
        # silently dead connection is noticed within the client timeout.
        stream = watch.Watch().stream(
            api.list_namespaced_endpoint_slice, self.namespace,
            label_selector=f"{SERVICE_NAME_LABEL}={self.service}", resource_version=state.resource_version,
            allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_s,
            _request_timeout=self.watch_timeout_s + 30.0)
        async with stream:
            async for event in stream:
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    state.apply(event["type"], event["object"])
                    publish()
                if stream.resource_version:
                    state.resource_version = stream.resource_version

    async def _backoff(self, err: Exception, delay_s: float) -> float:
        log.warning("endpointslices of %s/%s: %s: %s; retrying in %.1f s",
                    self.namespace, self.service, type(err).__name__, err, delay_s)
        await asyncio.sleep(delay_s)
        return min(delay_s * 2, self.retry_s[1])

    async def _config(self):
        if self.api_config is not None:
            return self.api_config
        from kubernetes.aio import client, config

        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            await config.load_kube_config(client_configuration=cfg)
        return cfg
