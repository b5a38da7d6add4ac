"""Prometheus plumbing shared by the services: one registry per process (with the standard
process and platform collectors) and the HTTP exporter that serves it on `/metrics`.

Each service defines its own metric families against the registry it is handed, so tests and
the monolithic process can hold several services' metrics without colliding in a global."""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server

log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class MetricsServer:
    """`GET /metrics` over HTTP on a daemon thread. Port 0 picks a free port (see `.port`)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
