"""gRPC server boilerplate shared by every service: the error interceptor, health and
reflection, message size limits, and SIGTERM -> NOT_SERVING -> stop(grace) -> drain."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from dvd.errors import RETRY_AFTER_KEY, DvdError, Internal, ResourceExhausted, kind_of
from dvd.grpc_options import MAX_MESSAGE_BYTES, channel_options
from dvd.tls import TlsFiles

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, ResourceExhausted):  # the client's cue to back off: seconds, as HTTP's Retry-After
        await context.abort(kind_of(exc).grpc_code, exc.message,
                            trailing_metadata=((RETRY_AFTER_KEY, str(math.ceil(exc.retry_after_s))),))
    if isinstance(exc, DvdError):
        await context.abort(kind_of(exc).grpc_code, exc.message)
    log.exception("unhandled error in %s", getattr(context, "_method", "rpc"))
    # The message is logged, not sent: it may name internal hosts, paths or credentials.
    await context.abort(kind_of(Internal("")).grpc_code, f"internal error ({type(exc).__name__})")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain exceptions raised by any handler to their gRPC status (dvd.errors table)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap_unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _wrap_unary(fn):
        async def call(request, context):
            try:
                return await fn(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - translated to a status code
                await _abort(context, exc)

        return call

    @staticmethod
    def _wrap_stream(fn):
        async def call(request, context):
            try:
                async for item in fn(request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - translated to a status code
                await _abort(context, exc)

        return call


class GrpcService:
    """An aio gRPC server with health + reflection. Register servicers, then `start()`;
    `serve_forever()` drains on SIGTERM/SIGINT."""

    def __init__(self, service_names: Iterable[str], max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.service_names = list(service_names)
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=channel_options(max_message_bytes))
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = 0
        self._health_server: grpc.aio.Server | None = None

    def bind(self, host: str, port: int, tls: TlsFiles | None = None) -> int:
        """Listen on host:port, with TLS (mTLS when `tls` names a client CA) when `tls` is enabled."""
        address = f"{host}:{port}"
        if tls is not None and tls.enabled:
            self.port = self.server.add_secure_port(address, tls.server_credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {host}:{port}")
        return self.port

    def bind_health(self, host: str, port: int) -> int:
        """Also serve the health service alone, in plaintext, on host:port: Kubernetes' native
        gRPC probes speak neither TLS nor credentials. Nothing else is reachable there."""
        self._health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        bound = self._health_server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot bind the health port {host}:{port}")
        return bound

    async def start(self) -> None:
        """Start serving; liveness ("") is SERVING at once, readiness waits for `set_ready`."""
        await self.server.start()
        if self._health_server is not None:
            await self._health_server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in self.service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def set_ready(self, ready: bool = True) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.service_names:
            await self.health.set(name, status)

    async def serve_forever(self, grace_s: float, on_stop: Callable[[], Awaitable[None]] | None = None,
                            linger_s: float = 0.0, after_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        """Block until SIGTERM/SIGINT, then drain: NOT_SERVING; keep serving for `linger_s` (so
        callers notice and peers can still pull what this replica holds); `on_stop` (stop other
        front doors); finish in-flight calls within `grace_s`; stop; `after_stop` (release what
        the in-flight calls were using: batcher, engine, fetch channels)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: draining for up to %.0f s", grace_s)
        await self.health.enter_graceful_shutdown()
        if linger_s > 0:
            await asyncio.sleep(linger_s)
        if on_stop is not None:
            await on_stop()
        await self.server.stop(grace_s)
        log.info("drained; stopping")
        if after_stop is not None:
            await after_stop()
        if self._health_server is not None:
            await self._health_server.stop(0)
