"""Sample backends behind Envoy, and the clients that call them through it.

Run as a process, it serves three backends on 127.0.0.1, each on a port of its own chosen by
the kernel, prints one JSON line `{"h1": PORT, "h2": PORT, "grpc": PORT}` on stdout and
serves until SIGTERM or SIGINT:

- HTTP/1.1 (stdlib `http.server`): `GET` answers a small JSON document naming the path;
  `POST` echoes the body after `echo:`; `GET /chunked` answers in three chunks.
- HTTP/2 cleartext with prior knowledge (the `h2` package): answers `h2 echo <path> <body>`
  with response trailers `x-h2-trailer: done`.
- gRPC (grpcio, generic handlers, raw bytes): `/demo.Echo/Unary` answers `echo:<request>`
  with trailing metadata `x-demo-trailer: unary-done`; `/demo.Echo/ServerStream` answers
  three messages `part-<n>:<request>` with `x-demo-trailer: stream-done`.

Under `/rec/` (HTTP/1.1 and h2c) and in the gRPC service `demo.Recorded`, each backend also
reports what the upstream received, as one JSON line `{"seen": {...}}` on stdout per request
(its headers in order, its body's length and SHA-256, whether it ended), so that a test can
compare a capture with what Envoy forwarded, including the trace id Envoy's tracer gave it;
see `Seen`. The routes are listed at `RECORDED_PREFIX`.

The client functions return exactly what the client saw, so tests can compare it with what
the tap recorded. Used by the Envoy end-to-end tests and by `scripts/demo.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events

LOOPBACK = "127.0.0.1"
GRPC_UNARY = "/demo.Echo/Unary"
GRPC_SERVER_STREAM = "/demo.Echo/ServerStream"
STREAM_PARTS = 3

Headers = list[tuple[str, str]]


# --- HTTP/1.1 ---------------------------------------------------------------------------


class _H1Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-h1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-backend", "h1")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith(RECORDED_PREFIX):
            _recorded_h1_get(self)
            return
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for n in range(STREAM_PARTS):
                piece = f"chunk-{n}\n".encode()
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        document = {"backend": "h1", "path": self.path, "method": "GET"}
        self._answer(json.dumps(document, sort_keys=True).encode(), "application/json")

    def do_POST(self) -> None:
        if self.path.startswith(RECORDED_PREFIX):
            _recorded_h1_post(self)
            return
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        self._answer(b"echo:" + body, "text/plain")


# --- HTTP/2 cleartext -------------------------------------------------------------------


class _H2Connection:
    """One HTTP/2 connection on the backend side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.requests: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.header_lists: dict[int, Headers] = {}

    async def serve(self) -> None:
        self.conn.initiate_connection()
        await self._flush()
        while True:
            data = await self.reader.read(65536)
            if not data:
                break
            for event in self.conn.receive_data(data):
                self._on(event)
            await self._flush()
        self.writer.close()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {str(k): str(v) for k, v in event.headers or []}
            self.requests[event.stream_id or 0] = (headers, bytearray())
            self.header_lists[event.stream_id or 0] = [
                (str(k), str(v)) for k, v in event.headers or []
            ]
        elif isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id or 0
            self.requests[stream_id][1].extend(event.data or b"")
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._respond(event.stream_id or 0)

    def _respond(self, stream_id: int) -> None:
        headers, body = self.requests.pop(stream_id)
        header_list = self.header_lists.pop(stream_id)
        if headers.get(":path", "").startswith(RECORDED_PREFIX):
            self._respond_recorded(stream_id, header_list, bytes(body))
            return
        answer = b"h2 echo " + headers.get(":path", "").encode() + b" " + bytes(body)
        self.conn.send_headers(
            stream_id,
            [
                (":status", "200"),
                ("content-type", "text/plain"),
                ("x-backend", "h2"),
            ],
        )
        self.conn.send_data(stream_id, answer)
        self.conn.send_headers(stream_id, [("x-h2-trailer", "done")], end_stream=True)

    def _respond_recorded(self, stream_id: int, headers: Headers, body: bytes) -> None:
        seen = Seen.of("h2", headers, body, complete=True)
        seen.report()
        summary = {"backend": "h2", "path": seen.path, "body_bytes": len(body)}
        self.conn.send_headers(
            stream_id,
            [(":status", "200"), ("content-type", "application/json"), ("x-backend", "h2")],
        )
        self.conn.send_data(stream_id, json.dumps(summary, sort_keys=True).encode())
        self.conn.send_headers(stream_id, [("x-h2-trailer", "done")], end_stream=True)

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()


async def _serve_h2(sock: socket.socket, stop: asyncio.Event) -> None:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _H2Connection(reader, writer).serve()

    server = await asyncio.start_server(on_connection, sock=sock)
    async with server:
        await stop.wait()


# --- gRPC -------------------------------------------------------------------------------


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-demo-trailer", "unary-done"),))
    return b"echo:" + request


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    context.set_trailing_metadata((("x-demo-trailer", "stream-done"),))
    for n in range(STREAM_PARTS):
        yield f"part-{n}:".encode() + request


def _grpc_server() -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
    }
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler("demo.Echo", handlers),
            grpc.method_handlers_generic_handler(RECORDED_SERVICE, _recorded_grpc_handlers()),
        ]
    )
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    return server, port


# --- recording routes: what the upstream received --------------------------------------

# HTTP/1.1 and h2c paths under this prefix are recorded. HTTP/1.1: `GET /rec/get` answers a
# small JSON document; `GET /rec/bytes/<n>` answers n bytes of `pattern_bytes(n)`;
# `POST /rec/echo` answers `echo:` and the request body (content-length or chunked);
# `POST /rec/upload` answers the body's length and also reports `{"progress": {...}}` after
# each read, so that a client can wait until the upstream has part of its upload.
# h2c: any method answers a small JSON document, then trailers `x-h2-trailer: done`.
RECORDED_PREFIX = "/rec/"
# gRPC: Unary answers `echo:<request>` with `x-demo-trailer: unary-done`; StreamThenFail
# answers STREAM_FAIL_PARTS messages `part-<n>:<request>`, then RESOURCE_EXHAUSTED with
# `x-demo-trailer: stream-failed`; TrailersOnly fails at once with INVALID_ARGUMENT (a
# trailers-only response) and `x-demo-trailer: trailers-only`.
RECORDED_SERVICE = "demo.Recorded"
RECORDED_UNARY = f"/{RECORDED_SERVICE}/Unary"
RECORDED_STREAM_FAIL = f"/{RECORDED_SERVICE}/StreamThenFail"
RECORDED_TRAILERS_ONLY = f"/{RECORDED_SERVICE}/TrailersOnly"
STREAM_FAIL_PARTS = 5
STREAM_FAIL_MESSAGE = "stream ended early"
TRAILERS_ONLY_MESSAGE = "request refused"
# A header (or gRPC metadata key) a client may send to find its request among the reports.
CASE_HEADER = "x-e2e-case"
# The HTTP/1.1 recorded routes answer with this `server` header and no `date`, so that what a
# proxy adds or replaces on the way back is plain to see.
RECORDED_H1_SERVER = "demo-h1-recorded"
_READ_BYTES = 16384
_reports = threading.Lock()


def pattern_bytes(size: int) -> bytes:
    """`size` bytes that are not all alike, the same on every call."""
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


@dataclass(frozen=True)
class Seen:
    """One request as a recorded backend received it."""

    protocol: str  # h1, h2 or grpc
    headers: Headers  # in arrival order; gRPC: invocation metadata (no pseudo-headers)
    body_bytes: int
    body_sha256: str
    complete: bool  # the whole body arrived

    @classmethod
    def of(cls, protocol: str, headers: Headers, body: bytes, *, complete: bool) -> Seen:
        digest = hashlib.sha256(body).hexdigest()
        return cls(protocol, headers, len(body), digest, complete)

    @property
    def path(self) -> str:
        return self.header(":path") or ""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def case(self) -> str | None:
        return self.header(CASE_HEADER)

    def report(self) -> None:
        _report({"seen": {**asdict(self), "headers": [list(h) for h in self.headers]}})

    @classmethod
    def from_report(cls, line: str) -> Seen | None:
        """The Seen a report line holds, or None for any other line."""
        try:
            fields = json.loads(line)["seen"]
        except (ValueError, KeyError, TypeError):
            return None
        fields["headers"] = [(str(k), str(v)) for k, v in fields["headers"]]
        return cls(**fields)


def progress_from_report(line: str) -> tuple[str, int] | None:
    """(case, body bytes received so far) of a `/rec/upload` progress line, else None."""
    try:
        fields = json.loads(line)["progress"]
        return str(fields["case"]), int(fields["body_bytes"])
    except (ValueError, KeyError, TypeError):
        return None


def _report(document: dict[str, Any]) -> None:
    with _reports:
        sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
        sys.stdout.flush()


def _h1_headers(handler: BaseHTTPRequestHandler) -> Headers:
    return [(":method", handler.command), (":path", handler.path), *handler.headers.items()]


def _answer_recorded(handler: _H1Handler, body: bytes, content_type: str) -> None:
    handler.send_response_only(200)
    handler.send_header("server", RECORDED_H1_SERVER)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(len(body)))
    handler.send_header("x-backend", "h1")
    handler.end_headers()
    handler.wfile.write(body)


def _recorded_h1_get(handler: _H1Handler) -> None:
    Seen.of("h1", _h1_headers(handler), b"", complete=True).report()
    prefix = f"{RECORDED_PREFIX}bytes/"
    if handler.path.startswith(prefix) and handler.path[len(prefix) :].isdigit():
        size = int(handler.path[len(prefix) :])
        _answer_recorded(handler, pattern_bytes(size), "application/octet-stream")
        return
    document = {"backend": "h1", "path": handler.path, "method": "GET"}
    _answer_recorded(handler, json.dumps(document, sort_keys=True).encode(), "application/json")


def _read_h1_body(handler: _H1Handler, on_read: Any) -> tuple[bytes, bool]:
    """The request body (content-length or chunked) and whether all of it arrived."""
    body = bytearray()
    try:
        if handler.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body), True
                chunk = handler.rfile.read(size)
                body += chunk
                on_read(len(body))
                if len(chunk) < size or handler.rfile.readline() not in (b"\r\n", b"\n"):
                    return bytes(body), False
        length = int(handler.headers.get("content-length", "0"))
        while len(body) < length:
            piece = handler.rfile.read1(min(_READ_BYTES, length - len(body)))
            if not piece:
                return bytes(body), False
            body += piece
            on_read(len(body))
        return bytes(body), True
    except (OSError, ValueError):
        return bytes(body), False


def _recorded_h1_post(handler: _H1Handler) -> None:
    case = handler.headers.get(CASE_HEADER, "")
    progress = handler.path.startswith(f"{RECORDED_PREFIX}upload")

    def on_read(received: int) -> None:
        if progress:
            _report({"progress": {"case": case, "body_bytes": received}})

    body, complete = _read_h1_body(handler, on_read)
    Seen.of("h1", _h1_headers(handler), body, complete=complete).report()
    if not complete:
        handler.close_connection = True
        return
    if progress:
        summary = json.dumps({"body_bytes": len(body)}).encode()
        _answer_recorded(handler, summary, "application/json")
        return
    _answer_recorded(handler, b"echo:" + body, "text/plain")


def _grpc_seen(context: grpc.ServicerContext, request: bytes) -> None:
    metadata = [(str(k), str(v)) for k, v in context.invocation_metadata()]
    Seen.of("grpc", metadata, grpc_frame(request), complete=True).report()


def _recorded_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    _grpc_seen(context, request)
    context.set_trailing_metadata((("x-demo-trailer", "unary-done"),))
    return b"echo:" + request


def _recorded_stream_then_fail(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    _grpc_seen(context, request)
    for n in range(STREAM_FAIL_PARTS):
        yield f"part-{n}:".encode() + request
    context.set_trailing_metadata((("x-demo-trailer", "stream-failed"),))
    context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
    context.set_details(STREAM_FAIL_MESSAGE)


def _recorded_trailers_only(request: bytes, context: grpc.ServicerContext) -> bytes:
    _grpc_seen(context, request)
    context.set_trailing_metadata((("x-demo-trailer", "trailers-only"),))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, TRAILERS_ONLY_MESSAGE)
    raise AssertionError("abort returns only by raising")


def _recorded_grpc_handlers() -> dict[str, grpc.RpcMethodHandler[bytes, bytes]]:
    return {
        "Unary": grpc.unary_unary_rpc_method_handler(_recorded_unary),
        "StreamThenFail": grpc.unary_stream_rpc_method_handler(_recorded_stream_then_fail),
        "TrailersOnly": grpc.unary_unary_rpc_method_handler(_recorded_trailers_only),
    }


# --- the process ------------------------------------------------------------------------


def serve() -> None:
    h1 = ThreadingHTTPServer((LOOPBACK, 0), _H1Handler)
    h1.daemon_threads = True
    threading.Thread(target=h1.serve_forever, daemon=True).start()

    h2_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    h2_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    h2_socket.bind((LOOPBACK, 0))
    h2_socket.listen(64)

    grpc_server, grpc_port = _grpc_server()
    ports = {"h1": h1.server_address[1], "h2": h2_socket.getsockname()[1], "grpc": grpc_port}
    print(json.dumps(ports), flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await _serve_h2(h2_socket, stop)

    asyncio.run(main())
    grpc_server.stop(0)
    h1.shutdown()


# --- clients ----------------------------------------------------------------------------


@dataclass
class Exchange:
    """What a client sent and what it got back."""

    request_headers: Headers
    request_body: bytes
    status: int = 0
    response_headers: Headers = field(default_factory=list)
    response_body: bytes = b""
    response_trailers: Headers = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)


def h1_request(
    port: int,
    method: str,
    path: str,
    host: str,
    headers: Headers,
    body: bytes = b"",
    timeout: float = 10.0,
) -> Exchange:
    """One HTTP/1.1 request on its own connection."""
    connection = HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sent = [("host", host), *headers]
        if body or method == "POST":
            sent.append(("content-length", str(len(body))))
        for key, value in sent:
            connection.putheader(key, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        data = response.read()
        return Exchange(
            request_headers=sent,
            request_body=body,
            status=response.status,
            response_headers=[(k.lower(), v) for k, v in response.getheaders()],
            response_body=data,
        )
    finally:
        connection.close()


def h2_request(
    port: int,
    method: str,
    path: str,
    authority: str,
    headers: Headers,
    body: bytes = b"",
    timeout: float = 10.0,
) -> Exchange:
    """One HTTP/2 request with prior knowledge (h2c), on its own connection."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    request_headers = [
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        (":authority", authority),
        *headers,
    ]
    exchange = Exchange(request_headers=request_headers, request_body=body)
    try:
        conn.send_headers(1, request_headers, end_stream=not body)
        if body:
            conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        response = bytearray()
        seen_headers = False
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("h2 connection closed before the response ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    seen_headers = True
                    exchange.response_headers = [(str(k), str(v)) for k, v in event.headers or []]
                elif isinstance(event, h2.events.TrailersReceived):
                    exchange.response_trailers = [(str(k), str(v)) for k, v in event.headers or []]
                elif isinstance(event, h2.events.DataReceived):
                    response.extend(event.data or b"")
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())
        if not seen_headers:
            raise ConnectionError("h2 stream ended without response headers")
        exchange.response_body = bytes(response)
        exchange.status = int(dict(exchange.response_headers)[":status"])
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return exchange


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed), as it travels in an HTTP/2 body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_call(
    port: int,
    method: str,
    authority: str,
    metadata: Headers,
    request: bytes,
    timeout: float = 10.0,
) -> Exchange:
    """A unary or server-streaming call through Envoy, on a channel of its own."""
    options = [("grpc.default_authority", authority), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(f"{LOOPBACK}:{port}", options=options) as channel:
        exchange = Exchange(request_headers=list(metadata), request_body=grpc_frame(request))
        if method == GRPC_UNARY:
            unary = channel.unary_unary(method, None, None)
            response, call = unary.with_call(request, metadata=tuple(metadata), timeout=timeout)
            exchange.messages = [response]
        else:
            stream = channel.unary_stream(method, None, None)
            call = stream(request, metadata=tuple(metadata), timeout=timeout)
            exchange.messages = list(call)
        exchange.status = call.code().value[0]
        exchange.response_headers = [(m[0], str(m[1])) for m in call.initial_metadata()]
        exchange.response_trailers = [(m[0], str(m[1])) for m in call.trailing_metadata()]
        exchange.response_body = b"".join(grpc_frame(m) for m in exchange.messages)
        return exchange


if __name__ == "__main__":
    serve()
    sys.exit(0)
