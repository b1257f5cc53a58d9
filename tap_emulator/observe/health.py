"""Observe: liveness, readiness and the HTTP endpoint that serves them with /metrics.

`/healthz` answers 200 while the process runs its event loop. `/readyz` answers 200 only
when taps can be accepted: the gRPC listener is up, the output directory takes a new file
and the server is not shutting down; otherwise 503 with the reason in the body. The same
readiness drives the standard `grpc.health.v1.Health` service on the tap port.

The HTTP side is a deliberately small asyncio server (GET only, one request per
connection): scrapes and probes need nothing more, and it adds no dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tap_emulator.netaddr import peer_address
from tap_emulator.observe.metrics import Metrics

log = logging.getLogger(__name__)

_MAX_REQUEST_HEAD_BYTES = 8192
_READ_TIMEOUT_SECONDS = 5.0


class Readiness:
    """Whether the emulator can take taps now, and if not, why.

    Every check reads state kept up to date elsewhere (the output directory's watch, the
    writers, the stream slots): answering never touches the disk, so a frozen file system
    cannot make the answer itself hang."""

    def __init__(self, *checks: Callable[[], str | None]) -> None:
        self._checks = checks
        self.listening = False
        self.draining = False

    def problem(self) -> str | None:
        if self.draining:
            return "shutting down"
        if not self.listening:
            return "tap listener not started"
        for check in self._checks:
            trouble = check()
            if trouble is not None:
                return trouble
        return None


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class GrpcHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """The standard gRPC health service (Check and Watch), following readiness.

    Watch calls are long-lived: they have slots of their own (in all and per peer address),
    so watchers can neither take the tap sources' stream slots nor pile up without bound."""

    def __init__(self, services: tuple[str, ...], max_watches: int = 100, per_peer: int = 10):
        self._status = dict.fromkeys(("", *services), _NOT_SERVING)
        self._changed = asyncio.Condition()
        self._max_watches = max_watches
        self._per_peer = per_peer
        self._watches: dict[str, int] = {}

    async def serving(self, ready: bool) -> None:
        status = _SERVING if ready else _NOT_SERVING
        if all(value == status for value in self._status.values()):
            return
        async with self._changed:
            for service in self._status:
                self._status[service] = status
            self._changed.notify_all()

    async def Check(  # noqa: N802 (the gRPC method's name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802 (the gRPC method's name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        peer = peer_address(context.peer())
        if sum(self._watches.values()) >= self._max_watches or (
            self._watches.get(peer, 0) >= self._per_peer
        ):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many health watches (at most {self._max_watches}, {self._per_peer} per "
                "peer); use Check",
            )
        self._watches[peer] = self._watches.get(peer, 0) + 1
        try:
            last = None
            while True:
                status = self._status.get(request.service, _SERVICE_UNKNOWN)
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                async with self._changed:
                    await self._changed.wait()
        finally:
            self._watches[peer] -= 1
            if not self._watches[peer]:
                del self._watches[peer]


class HttpEndpoint:
    """Serves /metrics, /healthz and /readyz over plain HTTP/1.1."""

    def __init__(self, metrics: Metrics, readiness: Readiness) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body = self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        except ConnectionError:
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _respond(self, head: bytes) -> tuple[int, str, bytes]:
        if len(head) > _MAX_REQUEST_HEAD_BYTES:
            return 431, "text/plain", b"request head too large\n"
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            problem = self._readiness.problem()
            if problem is None:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {problem}\n".encode()
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
