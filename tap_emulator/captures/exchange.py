"""One transaction in full: its files read again and its pieces put back together into a
request and a response (headers, body chunks, trailers, times, addresses), in the order the
proxy saw them. What `show`, the HAR and pcapng exports and a detail page are built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tap_emulator._proto.envoy.config.core.v3.address_pb2 import Address
from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderValue
from tap_emulator._proto.envoy.data.tap.v3.common_pb2 import Body, Connection
from tap_emulator._proto.envoy.data.tap.v3.http_pb2 import HttpBufferedTrace
from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.captures.formats import TraceFileError, split_traces
from tap_emulator.captures.model import PieceKind, Transaction
from tap_emulator.derive.redact import REDACTED

_REDACTED_BYTES = REDACTED.encode()


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header as recorded. `raw` is the value's bytes (Envoy's `raw_value`, else the
    UTF-8 of `value`); `redacted` when the emulator replaced it."""

    name: str
    value: str
    raw: bytes
    redacted: bool


@dataclass(frozen=True, slots=True)
class Chunk:
    """A body piece: one streamed chunk, or a buffered trace's whole body."""

    data: bytes
    truncated: bool


@dataclass(slots=True)
class HttpMessage:
    """A request or a response. `headers` None: not recorded at all."""

    headers: list[HeaderField] | None = None
    chunks: list[Chunk] = field(default_factory=list)
    trailers: list[HeaderField] | None = None
    headers_time: float | None = None  # epoch seconds, where recorded

    @property
    def body(self) -> bytes:
        return b"".join(chunk.data for chunk in self.chunks)

    @property
    def truncated(self) -> bool:
        return any(chunk.truncated for chunk in self.chunks)

    def header(self, name: str) -> str | None:
        """The first value of a header (name lowercase), from headers then trailers."""
        for fields in (self.headers or [], self.trailers or []):
            for item in fields:
                if item.name == name:
                    return item.value
        return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Event:
    """What happened, in order: `side` request/response, `part` headers/chunk/trailers."""

    side: str
    part: str
    chunk: int = 0  # index into that side's chunks


@dataclass(slots=True)
class Exchange:
    """A transaction's record and its full content."""

    transaction: Transaction
    request: HttpMessage
    response: HttpMessage
    events: list[Event] = field(default_factory=list)
    client: Endpoint | None = None  # downstream remote address
    server: Endpoint | None = None  # downstream local address (the proxy's listener)
    problems: list[str] = field(default_factory=list)  # files that could not be read again


def _headers(values: list[HeaderValue]) -> list[HeaderField]:
    found = []
    for header in values:
        raw = header.raw_value if header.raw_value and not header.value else header.value.encode()
        text = header.value or raw.decode("utf-8", errors="replace")
        redacted = header.value == REDACTED or header.raw_value == _REDACTED_BYTES
        found.append(HeaderField(header.key.lower(), text, raw, redacted))
    return found


def _chunk(body: Body) -> Chunk:
    kind = body.WhichOneof("body_type")
    if kind == "as_string":
        return Chunk(body.as_string.encode("utf-8", errors="surrogatepass"), body.truncated)
    return Chunk(body.as_bytes, body.truncated)


def _endpoint(address: Address) -> Endpoint | None:
    if not address.HasField("socket_address"):
        return None
    socket = address.socket_address
    return Endpoint(socket.address, socket.port_value)


def _time(message: HttpBufferedTrace.Message) -> float | None:
    if not message.HasField("headers_received_time"):
        return None
    stamp = message.headers_received_time
    return float(stamp.seconds) + stamp.nanos / 1e9


class _Builder:
    def __init__(self, transaction: Transaction) -> None:
        self.exchange = Exchange(transaction, HttpMessage(), HttpMessage())

    def side(self, name: str) -> HttpMessage:
        return self.exchange.request if name == "request" else self.exchange.response

    def buffered(self, trace: HttpBufferedTrace) -> None:
        for name in ("request", "response"):
            if not trace.HasField(name):
                continue
            message: HttpBufferedTrace.Message = getattr(trace, name)
            side = self.side(name)
            side.headers = _headers(list(message.headers))
            side.headers_time = _time(message)
            self.event(name, "headers")
            if message.HasField("body"):
                self.chunk(name, _chunk(message.body))
            if message.trailers:
                side.trailers = _headers(list(message.trailers))
                self.event(name, "trailers")
        if trace.HasField("downstream_connection"):
            self.connection(trace.downstream_connection)

    def connection(self, connection: Connection) -> None:
        if connection.HasField("remote_address"):
            self.exchange.client = _endpoint(connection.remote_address)
        if connection.HasField("local_address"):
            self.exchange.server = _endpoint(connection.local_address)

    def segment(self, trace: TraceWrapper) -> None:
        segment = trace.http_streamed_trace_segment
        piece = segment.WhichOneof("message_piece")
        if piece is None:
            return
        name, _, part = piece.partition("_")
        value = getattr(segment, piece)
        side = self.side(name)
        if part == "headers":
            side.headers = (side.headers or []) + _headers(list(value.headers))
            self.event(name, "headers")
        elif part == "trailers":
            side.trailers = (side.trailers or []) + _headers(list(value.headers))
            self.event(name, "trailers")
        else:
            self.chunk(name, _chunk(value))

    def chunk(self, name: str, chunk: Chunk) -> None:
        side = self.side(name)
        side.chunks.append(chunk)
        self.event(name, "chunk", len(side.chunks) - 1)

    def event(self, side: str, part: str, chunk: int = 0) -> None:
        self.exchange.events.append(Event(side, part, chunk))


def load_exchange(transaction: Transaction) -> Exchange:
    """Read a transaction's files again and put its content together. A file that is gone
    or changed since it was listed is named in `problems`; the rest is still shown."""
    builder = _Builder(transaction)
    cache: dict[str, list[bytes]] = {}
    for piece in transaction.pieces:
        traces = cache.get(piece.source)
        if traces is None:
            try:
                traces = split_traces(piece.source, Path(piece.source).read_bytes())
            except (OSError, TraceFileError) as exc:
                builder.exchange.problems.append(f"{piece.source}: {exc}")
                traces = []
            cache = {piece.source: traces}  # pieces of one file are consecutive
        if piece.index >= len(traces):
            continue
        trace = TraceWrapper.FromString(traces[piece.index])
        if piece.kind in (
            PieceKind.BUFFERED,
            PieceKind.BUFFERED_REQUEST,
            PieceKind.BUFFERED_RESPONSE,
        ):
            builder.buffered(trace.http_buffered_trace)
        else:
            builder.segment(trace)
    return builder.exchange
