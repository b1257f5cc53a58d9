"""A raw HTTP/2 client for abuse tests: it sends what a gRPC library never would.

Built on the `h2` state machine over a plain blocking socket, with every wait bounded by a
deadline, so a test can send bad gRPC framing (a compressed flag without an encoding, a
length prefix longer than the data, a declared 4 GiB message), PING floods, rapid
HEADERS + RST_STREAM pairs, or plain garbage, and then read exactly what the server answered:
per stream its headers, trailers and reset code; per connection its GOAWAY.

It never imports tap_emulator or xds-protos: messages are given to it as bytes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

TAP_PATH = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
_READ_CHUNK = 65_536


def grpc_frame(
    message: bytes, *, compressed: bool = False, declared_length: int | None = None
) -> bytes:
    """A gRPC length-prefixed message: flag byte, 4-byte big-endian length, payload.

    `declared_length` lies about the length (longer or shorter than `message`)."""
    length = len(message) if declared_length is None else declared_length
    return struct.pack(">BI", 1 if compressed else 0, length) + message


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class StreamOutcome:
    """What the server answered on one stream."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""
    ended: bool = False
    reset_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.ended or self.reset_code is not None

    def _field(self, name: str) -> str | None:
        # A trailers-only answer carries grpc-status in its (only) HEADERS frame.
        for key, value in [*self.trailers, *self.headers]:
            if key == name:
                return value
        return None

    @property
    def grpc_status(self) -> int | None:
        value = self._field("grpc-status")
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return self._field("grpc-message") or ""


@dataclass
class ConnectionOutcome:
    """What happened to the connection as a whole."""

    goaway_code: int | None = None
    goaway_debug: bytes = b""
    closed: bool = False  # the server closed the TCP connection
    pings_acked: int = 0
    frames_received: int = 0


class RawH2:
    """One HTTP/2 connection to `address` (HOST:PORT), driven by hand."""

    def __init__(
        self, address: str, timeout: float = 10.0, *, source_host: str | None = None
    ) -> None:
        """`source_host` binds the connection's own end (127.0.0.2, say: another peer)."""
        self.address = address
        self.timeout = timeout
        host, port = split_address(address)
        source = None if source_host is None else (source_host, 0)
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=source)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.streams: dict[int, StreamOutcome] = {}
        self.connection = ConnectionOutcome()
        self.conn.initiate_connection()
        self.flush()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # --- sending --------------------------------------------------------------------------

    def flush(self) -> bool:
        """Send what h2 has queued; False when the connection is gone."""
        data = self.conn.data_to_send()
        if not data or self.connection.closed:
            return not self.connection.closed
        try:
            self.sock.sendall(data)
        except OSError:
            self.connection.closed = True
            return False
        return True

    def open_call(self, path: str = TAP_PATH, extra: Iterable[tuple[str, str]] = ()) -> int:
        """HEADERS for a gRPC call; returns the stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.address),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
        self.conn.send_headers(stream_id, headers)
        self.streams[stream_id] = StreamOutcome()
        self.flush()
        return stream_id

    def send_data(
        self, stream_id: int, data: bytes, *, end_stream: bool = False, within: float | None = None
    ) -> int:
        """Send `data` on a stream as flow control allows; returns how many bytes went out.

        Stops early (without error) when the stream is reset, the connection closes or
        `within` seconds (default: the connection timeout) pass without room to send."""
        deadline = time.monotonic() + (self.timeout if within is None else within)
        view = memoryview(data)
        sent = 0
        while view:
            outcome = self.streams[stream_id]
            if (
                outcome.finished
                or self.connection.closed
                or self.connection.goaway_code is not None
            ):
                return sent
            try:
                room = min(
                    self.conn.local_flow_control_window(stream_id),
                    self.conn.max_outbound_frame_size,
                    len(view),
                )
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return sent
            if room <= 0:
                if time.monotonic() > deadline:
                    return sent
                self.pump(0.05)
                continue
            try:
                self.conn.send_data(stream_id, bytes(view[:room]))
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return sent
            view = view[room:]
            sent += room
            if not self.flush():
                return sent
            self.pump(0)
        if end_stream:
            self.end_stream(stream_id)
        return sent

    def end_stream(self, stream_id: int) -> None:
        try:
            self.conn.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        try:
            self.conn.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def ping(self, opaque: bytes = b"abusive!") -> bool:
        """Send one PING; False once the connection refuses more (GOAWAY or closed)."""
        if self.connection.closed:
            return False
        try:
            self.conn.ping(opaque)
        except h2.exceptions.ProtocolError:
            return False
        return self.flush()

    # --- receiving ------------------------------------------------------------------------

    def pump(self, timeout: float) -> bool:
        """Read what has arrived within `timeout` seconds; False once the server closed."""
        if self.connection.closed:
            return False
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return True
            chunk = self.sock.recv(_READ_CHUNK)
        except OSError:
            self.connection.closed = True
            return False
        if not chunk:
            self.connection.closed = True
            return False
        try:
            events = self.conn.receive_data(chunk)
        except h2.exceptions.ProtocolError:
            self.connection.closed = True
            return False
        for event in events:
            self._handle(event)
        self.flush()
        return True

    def wait(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Pump until `done()` or the connection closes or `timeout` passes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.pump(min(remaining, 0.2)):
                return done()
        return True

    def wait_finished(self, stream_id: int, timeout: float | None = None) -> StreamOutcome:
        self.wait(lambda: self.streams[stream_id].finished, timeout)
        return self.streams[stream_id]

    def drain_until_closed(self, timeout: float | None = None) -> ConnectionOutcome:
        self.wait(lambda: self.connection.closed, timeout)
        return self.connection

    def _handle(self, event: h2.events.Event) -> None:
        self.connection.frames_received += 1
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers = _text_headers(event.headers)
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers = _text_headers(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None:
                stream.data += event.data
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset_code = int(event.error_code or 0)
        elif isinstance(event, h2.events.PingAckReceived):
            self.connection.pings_acked += 1
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.connection.goaway_code = int(event.error_code or 0)
            self.connection.goaway_debug = event.additional_data or b""


def _text_headers(headers: Iterable[tuple[object, object]] | None) -> list[tuple[str, str]]:
    shown = []
    for key, value in headers or ():
        shown.append((_text(key), _text(value)))
    return shown


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def send_garbage(address: str, blob: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Write `blob` to a fresh TCP connection; returns (what came back, closed by server)."""
    host, port = split_address(address)
    received = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(blob)
        except OSError:
            return received, True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ready, _, _ = select.select([sock], [], [], 0.2)
                if not ready:
                    continue
                chunk = sock.recv(_READ_CHUNK)
            except OSError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
    return received, False


def goaway_name(code: int | None) -> str:
    if code is None:
        return "none"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)
