"""The page's HTTP side (aiohttp, on the server's own event loop): the page itself, its table
and event stream, one transaction in full (as `show` renders it), and downloads of the
filtered set as HAR and pcapng.

Read-only by construction: every route is GET (HEAD too); nothing here writes, deletes or
changes anything, and files are only ever read as the index's records name them (a request
names a row's number, never a path). Since the page shows captured bodies, it answers only
requests whose Host is an IP address, `localhost` or the host it was bound to (a web site
cannot reach it through a name of its own that resolves to the loopback address), tells
browsers not to cache, frame or sniff what it sends, and loads nothing from elsewhere.
Reading files back, rendering and exporting run in worker threads, two at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any

from aiohttp import web

from tap_emulator import __version__
from tap_emulator.captures.detail import describe
from tap_emulator.captures.exchange import load_exchange
from tap_emulator.captures.export import PcapExport, loaded, write_har
from tap_emulator.captures.model import Transaction
from tap_emulator.captures.protowire import ProtoDescriptors
from tap_emulator.captures.render import render_view
from tap_emulator.observe.health import HTTP_SERVER_LOG
from tap_emulator.web.events import EventHub, encode_json
from tap_emulator.web.index import TransactionIndex
from tap_emulator.web.rows import RowFilter

log = logging.getLogger(__name__)

_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_EXPORT_CHUNK_BYTES = 256 * 1024
_EXPORT_QUEUED_CHUNKS = 4
_WORKERS = 2
_READ_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class _StaticFile:
    body: bytes
    content_type: str


def static_files() -> dict[str, _StaticFile]:
    """The page's own files, shipped in the package: `/` and `/static/<name>`."""
    found = {}
    for item in resources.files("tap_emulator.web").joinpath("static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in _STATIC_TYPES:
            found[item.name] = _StaticFile(item.read_bytes(), _STATIC_TYPES[suffix])
    return found


def host_allowed(host_header: str | None, bound_host: str) -> bool:
    """An IP address, `localhost` (and names under it) or the host the page was bound to."""
    if not host_header:
        return True  # no browser sends a request without one
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return host in ("localhost", bound_host.lower()) or host.endswith(".localhost")


def _json_response(value: Any, status: int = 200) -> web.Response:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return web.Response(status=status, text=body, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json_response({"error": message}, status)


class PageServer:
    """Serves one index: the live emulator's or a browsed directory's."""

    def __init__(
        self,
        index: TransactionIndex,
        hub: EventHub,
        status: Callable[[], dict[str, Any]],
        *,
        mode: str,
        title: str,
        descriptors: ProtoDescriptors | None = None,
    ) -> None:
        self.index = index
        self.hub = hub
        self.status = status
        self.mode = mode
        self.title = title
        self.descriptors = descriptors
        self._static = static_files()
        self._workers = asyncio.Semaphore(_WORKERS)
        self._runner: web.AppRunner | None = None
        self._bound_host = ""

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._bound_host = host
        application = web.Application(
            middlewares=[self._guard],
            handler_args={"keepalive_timeout": _READ_TIMEOUT_SECONDS, "logger": HTTP_SERVER_LOG},
        )
        application.on_response_prepare.append(_add_security_headers)
        routes = application.router
        routes.add_get("/", self._page)
        routes.add_get("/static/{name}", self._static_file)
        routes.add_get("/api/transactions", self._table)
        routes.add_get("/api/transactions/{number}", self._detail)
        routes.add_get("/api/events", self._events)
        routes.add_get("/api/status", self._status)
        routes.add_get("/api/export.har", self._export_har)
        routes.add_get("/api/export.pcapng", self._export_pcapng)
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
        self.hub.close()  # ends the event streams, which would otherwise hold the shutdown
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- guards -------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), self._bound_host):
            return web.Response(
                status=421,
                text="this page answers only to an IP address or localhost (its bodies are "
                "sensitive); reach it with kubectl port-forward or an SSH tunnel\n",
            )
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="read-only: GET only\n")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return web.Response(status=404, text="not found: the page is at /\n")
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="read-only: GET only\n")

    # --- the page -----------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        return self._static_response("index.html")

    async def _static_file(self, request: web.Request) -> web.Response:
        return self._static_response(request.match_info["name"])

    def _static_response(self, name: str) -> web.Response:
        found = self._static.get(name)
        if found is None:
            raise web.HTTPNotFound()
        response = web.Response(body=found.body)
        response.headers["Content-Type"] = found.content_type
        return response

    async def _status(self, request: web.Request) -> web.Response:
        return _json_response(self.status())

    def _hello(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "title": self.title,
            "version": self.index.version,
            "max": self.index.max_transactions,
            "emulator": __version__,
        }

    async def _table(self, request: web.Request) -> web.Response:
        try:
            wanted = RowFilter.from_query(request.query)
        except ValueError as exc:
            return _error(400, str(exc))
        if wanted == RowFilter():
            rows = self.index.rows_json()
        else:
            rows = [
                entry.json for entry in self.index.entries() if wanted.matches(entry.transaction)
            ]
        head = json.dumps(self._hello(), separators=(",", ":"))[:-1]
        return web.Response(
            text=head + ',"rows":[' + ",".join(rows) + "]}", content_type="application/json"
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        client = self.hub.subscribe()
        if client is None:
            return _error(503, f"at most {self.hub.max_clients} pages may follow at once")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            await response.write(
                b"retry: 2000\n\n"
                + encode_json("hello", self._hello())
                + encode_json("status", self.status())
            )
            while (data := await client.next()) is not None:
                await response.write(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(client)
        return response

    # --- one transaction ----------------------------------------------------------------

    async def _detail(self, request: web.Request) -> web.Response:
        try:
            number = int(request.match_info["number"])
        except ValueError:
            return _error(400, "a transaction is named by its row number")
        transaction = self.index.get(number)
        if transaction is None:
            return _error(
                404,
                f"transaction {number} is no longer held: the page keeps the last "
                f"{self.index.max_transactions}",
            )
        async with self._workers:
            body = await asyncio.to_thread(self._render_detail, transaction)
        return web.Response(text=body, content_type="application/json")

    def _render_detail(self, transaction: Transaction) -> str:
        view = describe(load_exchange(transaction), self.descriptors)
        return json.dumps(
            {"view": view.to_dict(), "text": render_view(view)},
            ensure_ascii=False,
            default=str,
        )

    # --- downloads ----------------------------------------------------------------------

    async def _export_har(self, request: web.Request) -> web.StreamResponse:
        return await self._export(request, "har", "application/json", _write_har)

    async def _export_pcapng(self, request: web.Request) -> web.StreamResponse:
        return await self._export(request, "pcapng", "application/vnd.tcpdump.pcap", _write_pcap)

    async def _export(
        self,
        request: web.Request,
        suffix: str,
        content_type: str,
        write: Callable[[list[Transaction], IO[bytes]], int],
    ) -> web.StreamResponse:
        try:
            wanted = RowFilter.from_query(request.query)
        except ValueError as exc:
            return _error(400, str(exc))
        chosen = self.index.select(wanted)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        response = web.StreamResponse(
            headers={
                "Content-Type": content_type,
                "Content-Disposition": f'attachment; filename="tap-emulator-{stamp}.{suffix}"',
                "X-Tap-Emulator-Transactions": str(len(chosen)),
            }
        )
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        async with self._workers:
            sink = _ChunkSink(asyncio.get_running_loop())
            writing = asyncio.create_task(asyncio.to_thread(_written, write, chosen, sink))
            try:
                while (chunk := await sink.chunks.get()) is not None:
                    await response.write(chunk)
            finally:
                sink.abandoned = True  # the download was cut: the writer stops at its next chunk
                sink.drain()
                with contextlib.suppress(ConnectionError, _AbandonedError):
                    await writing
        await response.write_eof()
        return response


class _AbandonedError(Exception):
    """The download was cut before its export was written."""


class _ChunkSink(io.RawIOBase):
    """A binary file the export writes in a worker thread; what it writes reaches the
    response in chunks, through a queue of a few, so the export waits for the client (never
    the other way round) and nothing is held on disk or in memory beyond those chunks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_EXPORT_QUEUED_CHUNKS)
        self.abandoned = False
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer += data
        if len(self._buffer) >= _EXPORT_CHUNK_BYTES:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def finish(self) -> None:
        if self._buffer:
            self._send(bytes(self._buffer))
        self._send(None)

    def _send(self, chunk: bytes | None) -> None:
        if self.abandoned:
            raise _AbandonedError()
        asyncio.run_coroutine_threadsafe(self.chunks.put(chunk), self.loop).result()

    def drain(self) -> None:
        """Empty the queue, so that a writer blocked on a full one goes on (and stops)."""
        while not self.chunks.empty():
            self.chunks.get_nowait()


def _written(
    write: Callable[[list[Transaction], IO[bytes]], int],
    chosen: list[Transaction],
    sink: _ChunkSink,
) -> int:
    try:
        return write(chosen, sink)  # type: ignore[arg-type]
    finally:
        sink.finish()  # the response ends even if the export failed part way


def _write_har(chosen: list[Transaction], out: IO[bytes]) -> int:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    try:
        return write_har(loaded(chosen), text)
    finally:
        text.flush()
        text.detach()


def _write_pcap(chosen: list[Transaction], out: IO[bytes]) -> int:
    export = PcapExport(out)  # type: ignore[arg-type]
    for transaction in chosen:
        export.add(transaction)
    return export.connections


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.pop("Server", None)
