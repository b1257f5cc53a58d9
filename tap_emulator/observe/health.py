"""Observe: liveness, readiness and the HTTP endpoint that serves them with /metrics.

`/healthz` answers 200 while the process runs its event loop. `/readyz` answers 200 only
when taps can be accepted: the gRPC listener is up, the output directory takes a new file
and the server is not shutting down; otherwise 503 with the reason in the body. The same
readiness drives the standard `grpc.health.v1.Health` service on the tap port.

The HTTP side runs on aiohttp, on the emulator's own event loop (docs/dependencies.md says
why); the web page has a listener of its own (`tap_emulator.web`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tap_emulator.netaddr import peer_address
from tap_emulator.observe.metrics import Metrics

log = logging.getLogger(__name__)


class _ClientMistakes(logging.Filter):
    """aiohttp logs a malformed request (answered 400) as an error with a traceback; it is
    the client's mistake, and anyone could fill our log with them: debug level only."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        if not HTTP_SERVER_LOG.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.exc_info = f"{record.msg}: {error}", None
        return True


# What the HTTP servers (this endpoint and the web page) log through.
HTTP_SERVER_LOG = logging.getLogger("tap_emulator.http")
HTTP_SERVER_LOG.addFilter(_ClientMistakes())

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
        self.calls = 0  # Check and Watch calls this servicer was given

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
        self.calls += 1
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802 (the gRPC method's name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        self.calls += 1
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
    """Serves /metrics, /healthz and /readyz over HTTP/1.1 (aiohttp, on the server's loop).

    GET and HEAD only (HEAD: the same status and headers, no body); the query string is
    ignored. A connection that sends no complete request head within 5 s is closed, as is
    one idle that long between requests; heads over 8 KiB are refused with 400."""

    def __init__(self, metrics: Metrics, readiness: Readiness) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        application = web.Application(handler_args=_HANDLER_ARGS)
        application.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(application, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self.close()
            raise
        bound = self._runner.addresses[0]
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        status, content_type, body = self._respond(request.method, request.path)
        response = web.Response(status=status, body=body)
        response.headers["Content-Type"] = content_type
        return response

    def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
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


# What every connection gets: 5 s to send a request head (aiohttp closes a connection that
# has no request in progress once keepalive_timeout passes), heads of at most 8 KiB.
_HANDLER_ARGS = {
    "keepalive_timeout": _READ_TIMEOUT_SECONDS,
    "logger": HTTP_SERVER_LOG,
    "max_line_size": _MAX_REQUEST_HEAD_BYTES,
    "max_field_size": _MAX_REQUEST_HEAD_BYTES,
}
