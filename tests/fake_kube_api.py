"""A local stand-in for kube-apiserver's EndpointSlice list + watch protocol over real HTTP
(JSON list, `?watch=true` chunked event stream with ADDED/MODIFIED/DELETED/BOOKMARK, 410 Gone
as an ERROR event), so the real `kubernetes` client is what gets tested."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web
from kubernetes.aio import client

NS = "dvd"
PATH = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


def endpoint_slice(name: str, service: str, pods: list[tuple], family: str = "IPv4", port: int = 50051) -> dict:
    """pods: (address, uid, ready[, terminating])."""
    endpoints = []
    for address, uid, ready, *rest in pods:
        terminating = bool(rest and rest[0])
        endpoints.append({
            "addresses": [address],
            "conditions": {"ready": ready, "serving": ready or terminating, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": NS, "name": f"pod-{uid}", "uid": uid},
            "nodeName": "node-1",
        })
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": family,
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


class FakeApiServer:
    """kube-apiserver's list + watch for one resource: a resourceVersion counter, an event
    history that can be compacted (watching from before it is 410 Gone), and watch streams
    that end on `timeoutSeconds` or when dropped."""

    def __init__(self) -> None:
        self.resource_version = 100
        self.objects: dict[str, dict] = {}
        self.history: list[tuple[int, str, dict]] = []
        self.compacted_before = 0
        self.requests: list[dict[str, str]] = []
        self.num_gone = 0
        self.fail_next_lists = 0
        self._streams: set[asyncio.Queue] = set()
        self.watching = asyncio.Event()  # set while a watch stream is open

    def put(self, obj: dict) -> None:
        self._record("MODIFIED" if obj["metadata"]["name"] in self.objects else "ADDED", obj)

    def delete(self, name: str) -> None:
        self._record("DELETED", self.objects[name])

    def compact(self) -> None:
        self.compacted_before = self.resource_version

    def drop_watches(self) -> None:
        for queue in self._streams:
            queue.put_nowait(None)

    def lists(self) -> list[dict[str, str]]:
        return [q for q in self.requests if q.get("watch") != "true"]

    def _record(self, event_type: str, obj: dict) -> None:
        self.resource_version += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        if event_type == "DELETED":
            self.objects.pop(obj["metadata"]["name"])
        else:
            self.objects[obj["metadata"]["name"]] = obj
        self.history.append((self.resource_version, event_type, obj))
        for queue in self._streams:
            queue.put_nowait((event_type, obj))

    @staticmethod
    def _selected(obj: dict, selector: str) -> bool:
        labels = obj["metadata"].get("labels", {})
        return all(labels.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(",") if term))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(query)
        selector = query.get("labelSelector", "")
        if query.get("watch") == "true":
            return await self._watch(request, query, selector)
        if self.fail_next_lists:
            self.fail_next_lists -= 1
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "InternalError", "code": 500}, status=500)
        items = [o for o in self.objects.values() if self._selected(o, selector)]
        return web.json_response({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                  "metadata": {"resourceVersion": str(self.resource_version)}, "items": items})

    async def _watch(self, request: web.Request, query: dict, selector: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        since = int(query.get("resourceVersion") or self.resource_version)

        async def send(event_type: str, obj: dict) -> None:
            await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

        if since < self.compacted_before:
            self.num_gone += 1
            await send("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": f"too old resource version: {since} ({self.compacted_before})",
                                 "reason": "Expired", "code": 410})
            return response
        queue: asyncio.Queue = asyncio.Queue()
        for rv, event_type, obj in self.history:
            if rv > since:
                queue.put_nowait((event_type, obj))
        if query.get("allowWatchBookmarks") == "true":
            queue.put_nowait(("BOOKMARK", {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                           "metadata": {"resourceVersion": str(self.resource_version)}}))
        self._streams.add(queue)
        self.watching.set()
        try:
            async with asyncio.timeout(float(query.get("timeoutSeconds", 3600))):
                while (item := await queue.get()) is not None:
                    if item[0] == "BOOKMARK" or self._selected(item[1], selector):
                        await send(*item)
        except TimeoutError:
            pass
        finally:
            self._streams.discard(queue)
            if not self._streams:
                self.watching.clear()
        return response


@contextlib.asynccontextmanager
async def api_server(fake: FakeApiServer):
    app = web.Application()
    app.router.add_get(PATH.format(ns="{ns}"), fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield client.Configuration(host=f"http://127.0.0.1:{port}")
    finally:
        fake.drop_watches()
        await runner.cleanup()
