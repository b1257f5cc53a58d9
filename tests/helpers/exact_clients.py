"""HTTP/1.1, h2c and gRPC clients that know byte for byte what they sent and got.

Each function puts its request on the wire itself (raw sockets for HTTP/1.1, the `h2` package's
state machine for HTTP/2 and gRPC) and returns an `ExactExchange` (a backends.py `Exchange`) whose
request headers are exactly the header lines or HEADERS fields sent, and whose response is what
came back, so that a test can compare a capture with both ends of a transaction. Unlike
`backends.h1_request` and `backends.h2_request`, these also send chunked and large bodies
(HTTP/2 frames and flow control honoured), abort an upload halfway, and send requests a
proxy must refuse.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPResponse

import h2.config
import h2.connection
import h2.events

from tests.helpers.backends import LOOPBACK, Exchange, Headers, grpc_frame


@dataclass
class ExactExchange(Exchange):
    """An exchange that also knows its request line. For HTTP/1.1, `request_headers` are the
    header lines sent (Host among them); for HTTP/2, the HEADERS fields, pseudo-headers first."""

    protocol: str = "h1"  # h1 or h2
    method: str = ""
    path: str = ""

    def request_header(self, name: str) -> str | None:
        for key, value in self.request_headers:
            if key.lower() == name:
                return value
        return None

    @property
    def authority(self) -> str | None:
        return self.request_header(":authority" if self.protocol == "h2" else "host")


def _h1_head(method: str, path: str, headers: Headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{key}: {value}" for key, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_h1_response(sock: socket.socket, method: str, exchange: ExactExchange) -> ExactExchange:
    response = HTTPResponse(sock, method=method)
    try:
        response.begin()
        exchange.status = response.status
        exchange.response_headers = [(key.lower(), value) for key, value in response.getheaders()]
        exchange.response_body = response.read()
    finally:
        response.close()
    return exchange


def h1_send(
    port: int,
    method: str,
    path: str,
    headers: Headers,
    body: bytes = b"",
    *,
    chunk_bytes: int | None = None,
    after_chunk: Callable[[int], None] | None = None,
    timeout: float = 20.0,
) -> ExactExchange:
    """One HTTP/1.1 request on a connection of its own. `headers` must hold `host`; a body
    goes with `content-length`, or with `transfer-encoding: chunked` in `chunk_bytes` pieces;
    `after_chunk(body bytes sent so far)` runs after each chunk (to wait for the proxy to
    have passed it on, so that each chunk is a read of its own)."""
    sent = list(headers)
    if chunk_bytes is None and (body or method in ("POST", "PUT")):
        sent.append(("content-length", str(len(body))))
    elif chunk_bytes is not None:
        sent.append(("transfer-encoding", "chunked"))
    exchange = ExactExchange(sent, body, method=method, path=path)
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        head = _h1_head(method, path, sent)
        if chunk_bytes is None:
            sock.sendall(head + body)
            return _read_h1_response(sock, method, exchange)
        sock.sendall(head)
        for at in range(0, len(body), chunk_bytes):
            piece = body[at : at + chunk_bytes]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if after_chunk is not None:
                after_chunk(at + len(piece))
        sock.sendall(b"0\r\n\r\n")
        return _read_h1_response(sock, method, exchange)


def h1_send_raw(
    port: int, method: str, path: str, headers: Headers, timeout: float = 20.0
) -> ExactExchange:
    """A request without a body, its header lines sent exactly as given (even ones a proxy
    must refuse, such as a Host with a space); the proxy's answer is read to its end."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(_h1_head(method, path, headers))
        exchange = ExactExchange(list(headers), b"", method=method, path=path)
        return _read_h1_response(sock, method, exchange)


def h1_abort_upload(
    port: int,
    path: str,
    headers: Headers,
    declared_bytes: int,
    body: bytes,
    wait_until_forwarded: Callable[[int], None],
    timeout: float = 20.0,
) -> ExactExchange:
    """A POST that announces `declared_bytes`, sends only `body`, waits until
    `wait_until_forwarded(len(body))` returns (the upstream has that much), then closes the
    connection: the transaction never ends. The exchange has no response (status 0)."""
    assert len(body) < declared_bytes
    sent = [*headers, ("content-length", str(declared_bytes))]
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(_h1_head("POST", path, sent) + body)
        wait_until_forwarded(len(body))
    return ExactExchange(sent, body, method="POST", path=path)


# --- HTTP/2 cleartext (prior knowledge) and gRPC over it -------------------------------------


class _H2Client:
    """One stream on a connection of its own; the body goes out in frames the peer allows."""

    STREAM = 1

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.headers: Headers = []
        self.trailers: Headers = []
        self.body = bytearray()
        self.ended = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("h2 connection closed before the response ended")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.headers = [(str(k), str(v)) for k, v in event.headers or []]
            elif isinstance(event, h2.events.TrailersReceived):
                self.trailers = [(str(k), str(v)) for k, v in event.headers or []]
            elif isinstance(event, h2.events.DataReceived):
                self.body.extend(event.data or b"")
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, self.STREAM)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self.ended = True
        self.flush()

    def send_body(self, body: bytes) -> None:
        sent = 0
        while sent < len(body):
            room = min(
                self.conn.local_flow_control_window(self.STREAM),
                self.conn.max_outbound_frame_size,
                len(body) - sent,
            )
            if room <= 0:
                self.receive()  # wait for a WINDOW_UPDATE
                continue
            last = sent + room == len(body)
            self.conn.send_data(self.STREAM, body[sent : sent + room], end_stream=last)
            sent += room
            self.flush()


def h2_send(
    port: int,
    method: str,
    path: str,
    authority: str,
    headers: Headers,
    body: bytes = b"",
    timeout: float = 20.0,
) -> ExactExchange:
    """One HTTP/2 request (cleartext, prior knowledge) on a connection of its own."""
    request_headers = [
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        (":authority", authority),
        *headers,
    ]
    exchange = ExactExchange(request_headers, body, protocol="h2", method=method, path=path)
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        client = _H2Client(sock)
        client.conn.initiate_connection()
        client.conn.send_headers(client.STREAM, request_headers, end_stream=not body)
        client.flush()
        if body:
            client.send_body(body)
        while not client.ended:
            client.receive()
        if not client.headers:
            raise ConnectionError("h2 stream ended without response headers")
        client.conn.close_connection()
        client.flush()
    exchange.response_headers = client.headers
    exchange.response_trailers = client.trailers
    exchange.response_body = bytes(client.body)
    exchange.status = int(dict(client.headers)[":status"])
    return exchange


def grpc_send(
    port: int, method: str, authority: str, metadata: Headers, message: bytes, timeout: float = 20.0
) -> ExactExchange:
    """A unary or server-streaming gRPC call (one uncompressed request message) over h2c; the
    response body keeps the 5-byte gRPC frame prefixes, as it travels."""
    headers = [("content-type", "application/grpc"), ("te", "trailers"), *metadata]
    return h2_send(port, "POST", method, authority, headers, grpc_frame(message), timeout)


def grpc_status(exchange: Exchange) -> str | None:
    """The call's grpc-status: from the trailers, or from the headers of a trailers-only
    response."""
    for key, value in [*exchange.response_trailers, *exchange.response_headers]:
        if key == "grpc-status":
            return value
    return None
