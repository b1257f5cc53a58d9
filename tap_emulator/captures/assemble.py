"""The incremental assembler: fed one trace file at a time (name and bytes), it groups pieces
back into HTTP transactions and returns the ones each file completes or updates.

Grouping:
- an emulator file (`<stem>-<seq>.pb` holding one trace) is one piece. Streamed segments
  join the transaction of their base stem (`<prefix>-<traceId>`, the req/res half left
  out) and Envoy trace id; the halves of a buffered trace in the req_res format pair up by
  base stem and recorded connection, nearest sequence number first;
- any other file (Envoy's `file_per_tap` output) is whole: each buffered trace in it is a
  transaction, and its streamed segments are grouped by their trace id.

Memory is bounded: at most `max_open` transactions and `max_open_pieces` piece references
are held open. Past either bound the least recently touched transaction is flushed, marked
`evicted`; a later piece of it starts a new record. Nothing else is kept per file.

Envoy never marks the end of a streamed transaction. One is final early only when its pieces
prove it: from request headers to response trailers, with no sequence number between them
held by anything else. The rest stay open until evicted or `flush()`.
"""

from __future__ import annotations

import bisect
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from tap_emulator._proto.envoy.config.core.v3.address_pb2 import Address
from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderValue
from tap_emulator._proto.envoy.data.tap.v3.common_pb2 import Body, Connection
from tap_emulator._proto.envoy.data.tap.v3.http_pb2 import HttpBufferedTrace
from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.captures.formats import TraceFileError, split_traces
from tap_emulator.captures.model import Missing, PieceKind, PieceRef, SequenceGap, Transaction
from tap_emulator.captures.names import (
    EmulatorName,
    direction_from_prefix,
    parse_emulator_name,
    split_stem,
)
from tap_emulator.derive.naming import (
    DEFAULT_TRACE_ID_HEADERS,
    Half,
    header_text,
    parse_trace_id,
)
from tap_emulator.derive.redact import REDACTED

DEFAULT_MAX_OPEN = 20_000
DEFAULT_MAX_OPEN_PIECES = 500_000

_REDACTED_BYTES = REDACTED.encode()
_REQUEST_WANTED = frozenset(
    {":authority", "host", ":method", ":path", ":scheme", "content-type", "content-length"}
    | set(DEFAULT_TRACE_ID_HEADERS)
)
_RESPONSE_WANTED = frozenset({":status", "content-length", "grpc-status", "grpc-message"})
# Headers HTTP/2 forbids (RFC 9113 8.2.2): seeing one proves an HTTP/1.1 connection.
_HTTP1_ONLY = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding"})
_ENVOY_NAME_ID = re.compile(r"_([0-9]{1,20})$")
_SEGMENT_KINDS = {kind.value: kind for kind in PieceKind}
_REQUEST_PIECES = frozenset(
    {PieceKind.REQUEST_HEADERS, PieceKind.REQUEST_BODY_CHUNK, PieceKind.REQUEST_TRAILERS}
)
_RESPONSE_SIDE = frozenset(
    {
        PieceKind.RESPONSE_HEADERS,
        PieceKind.RESPONSE_BODY_CHUNK,
        PieceKind.RESPONSE_TRAILERS,
        PieceKind.BUFFERED_RESPONSE,
    }
)


class _Seen:
    """The sequence numbers of one stem read so far, as sorted disjoint [first, last] runs."""

    __slots__ = ("firsts", "lasts", "users")

    def __init__(self) -> None:
        self.firsts: list[int] = []
        self.lasts: list[int] = []
        self.users = 0  # open transactions that have pieces under this stem

    def add(self, number: int) -> None:
        at = bisect.bisect_right(self.firsts, number)
        if at and self.lasts[at - 1] >= number:
            return
        joins_left = at > 0 and self.lasts[at - 1] == number - 1
        joins_right = at < len(self.firsts) and self.firsts[at] == number + 1
        if joins_left and joins_right:
            self.lasts[at - 1] = self.lasts[at]
            del self.firsts[at], self.lasts[at]
        elif joins_left:
            self.lasts[at - 1] = number
        elif joins_right:
            self.firsts[at] = number
        else:
            self.firsts.insert(at, number)
            self.lasts.insert(at, number)

    def holes(self, first: int, last: int) -> list[tuple[int, int]]:
        """The runs of numbers in [first, last] not seen."""
        found = []
        cursor = first
        at = max(bisect.bisect_right(self.firsts, first) - 1, 0)
        while cursor <= last and at < len(self.firsts):
            if self.lasts[at] < cursor:
                at += 1
                continue
            if self.firsts[at] > cursor:
                found.append((cursor, min(self.firsts[at] - 1, last)))
            cursor = self.lasts[at] + 1
            at += 1
        if cursor <= last:
            found.append((cursor, last))
        return found


@dataclass(slots=True)
class _Open:
    """A transaction being assembled: what its pieces said so far."""

    key: str
    origin: str
    streamed: bool
    base: str | None = None  # the emulator's base stem
    envoy_trace_id: int | None = None
    pieces: list[PieceRef] = field(default_factory=list)
    request: dict[str, str] = field(default_factory=dict)
    response: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    kinds: set[PieceKind] = field(default_factory=set)
    had_request_message: bool = False
    had_response_message: bool = False
    request_body_bytes: int = 0
    response_body_bytes: int = 0
    request_truncated: bool = False
    response_truncated: bool = False
    http1_headers: bool = False
    request_time: float | None = None
    response_time: float | None = None
    earliest_mtime: float | None = None
    client_address: str | None = None
    server_address: str | None = None
    redacted: dict[str, None] = field(default_factory=dict)
    sequences: dict[str, list[int]] = field(default_factory=dict)  # stem -> its numbers here
    gaps: list[SequenceGap] = field(default_factory=list)
    evicted: bool = False
    pairing: tuple[str, bytes] | None = None  # an unpaired buffered half waits under this


def _values(
    headers: Iterable[HeaderValue], wanted: frozenset[str], into: dict[str, str], tx: _Open
) -> None:
    for header in headers:
        key = header.key.lower()
        if key in wanted and key not in into:
            into[key] = header_text(header)
        if header.value == REDACTED or header.raw_value == _REDACTED_BYTES:
            tx.redacted[key] = None
        if key in _HTTP1_ONLY:
            tx.http1_headers = True


def _body_size(body: Body) -> int:
    kind = body.WhichOneof("body_type")
    if kind == "as_bytes":
        return len(body.as_bytes)
    if kind == "as_string":
        return len(body.as_string.encode("utf-8", errors="surrogatepass"))
    return 0


def _address_text(address: Address) -> str | None:
    if not address.HasField("socket_address"):
        return address.pipe.path or None
    socket = address.socket_address
    host = f"[{socket.address}]" if ":" in socket.address else socket.address
    return f"{host}:{socket.port_value}"


def _connection(tx: _Open, connection: Connection) -> None:
    if connection.HasField("remote_address"):
        tx.client_address = _address_text(connection.remote_address)
    if connection.HasField("local_address"):
        tx.server_address = _address_text(connection.local_address)


def _seconds(message: HttpBufferedTrace.Message) -> float | None:
    if not message.HasField("headers_received_time"):
        return None
    stamp = message.headers_received_time
    return float(stamp.seconds) + stamp.nanos / 1e9


def _add_buffered(tx: _Open, buffered: HttpBufferedTrace) -> None:
    if buffered.HasField("request"):
        request = buffered.request
        tx.had_request_message = True
        _values(request.headers, _REQUEST_WANTED, tx.request, tx)
        _values(request.trailers, frozenset(), {}, tx)
        tx.request_body_bytes += _body_size(request.body)
        tx.request_truncated |= request.body.truncated
        tx.request_time = _seconds(request)
    if buffered.HasField("response"):
        response = buffered.response
        tx.had_response_message = True
        _values(response.headers, _RESPONSE_WANTED, tx.response, tx)
        _values(response.trailers, _RESPONSE_WANTED, tx.trailers, tx)
        tx.response_body_bytes += _body_size(response.body)
        tx.response_truncated |= response.body.truncated
        tx.response_time = _seconds(response)
    if buffered.HasField("downstream_connection"):
        _connection(tx, buffered.downstream_connection)


def _add_segment(tx: _Open, trace: TraceWrapper) -> PieceKind:
    segment = trace.http_streamed_trace_segment
    piece = segment.WhichOneof("message_piece")
    if piece is None:
        return PieceKind.EMPTY
    kind = _SEGMENT_KINDS[piece]
    value = getattr(segment, piece)
    if kind is PieceKind.REQUEST_HEADERS:
        _values(value.headers, _REQUEST_WANTED, tx.request, tx)
    elif kind is PieceKind.RESPONSE_HEADERS:
        _values(value.headers, _RESPONSE_WANTED, tx.response, tx)
    elif kind is PieceKind.RESPONSE_TRAILERS:
        _values(value.headers, _RESPONSE_WANTED, tx.trailers, tx)
    elif kind is PieceKind.REQUEST_TRAILERS:
        _values(value.headers, frozenset(), {}, tx)
    elif kind is PieceKind.REQUEST_BODY_CHUNK:
        tx.request_body_bytes += _body_size(value)
        tx.request_truncated |= value.truncated
    else:
        tx.response_body_bytes += _body_size(value)
        tx.response_truncated |= value.truncated
    return kind


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _missing(tx: _Open) -> tuple[Missing, ...]:
    found: list[Missing] = []
    if tx.streamed:
        if PieceKind.REQUEST_HEADERS not in tx.kinds:
            rejected = PieceKind.EMPTY in tx.kinds
            found.append(Missing.REQUEST if rejected else Missing.REQUEST_HEADERS)
        if PieceKind.RESPONSE_HEADERS not in tx.kinds:
            found.append(Missing.RESPONSE)
    else:
        if not tx.had_request_message:
            found.append(Missing.REQUEST)
        if not tx.had_response_message:
            found.append(Missing.RESPONSE)
    if tx.gaps:
        found.append(Missing.SEQUENCE_GAP)
    return tuple(found)


def _http_version(tx: _Open) -> str | None:
    content_type = tx.request.get("content-type", "")
    if content_type.startswith("application/grpc") and not content_type.startswith(
        "application/grpc-web"
    ):
        return "HTTP/2"
    return "HTTP/1.1" if tx.http1_headers else None


def _header_trace_id(request: dict[str, str]) -> str | None:
    for header in DEFAULT_TRACE_ID_HEADERS:
        value = request.get(header)
        if value is not None:
            parsed = parse_trace_id(header, value)
            if parsed is not None:
                return parsed
    return None


def _authority(request: dict[str, str]) -> str | None:
    """`:authority`, else `host`, as recorded (an empty one stays empty)."""
    return request.get(":authority", request.get("host"))


def _ordered(tx: _Open) -> tuple[PieceRef, ...]:
    """Pieces in the order they happened: file order within an Envoy file, sequence order
    within a stem; with req_res names the request half before the response half."""
    if tx.origin == "envoy":
        return tuple(tx.pieces)
    halves_count_apart = len(tx.sequences) > 1 or not tx.streamed
    return tuple(
        sorted(
            tx.pieces,
            key=lambda p: (halves_count_apart and p.kind in _RESPONSE_SIDE, _number(p)),
        )
    )


def _time(tx: _Open) -> tuple[float | None, str | None]:
    recorded = tx.request_time if tx.request_time is not None else tx.response_time
    if recorded is not None:
        return recorded, "recorded"
    if tx.earliest_mtime is not None:
        return tx.earliest_mtime, "file_mtime"
    return None, None


def snapshot(tx: _Open, final: bool) -> Transaction:
    """The record of `tx` as it stands."""
    request = tx.request
    has_request = tx.had_request_message or PieceKind.REQUEST_HEADERS in tx.kinds
    authority = _authority(request) if has_request else None
    header_trace_id = _header_trace_id(request)
    name_trace_id = prefix = None
    if tx.base is not None:
        hint = header_trace_id
        if hint is None and tx.envoy_trace_id is not None:
            hint = format(tx.envoy_trace_id, "x")  # what the emulator names it without one
        parts = split_stem(tx.base, hint)
        name_trace_id, prefix = parts.trace_id, parts.prefix
    direction = direction_from_prefix(prefix, authority) if has_request else "unknown"
    grpc_status = tx.trailers.get("grpc-status", tx.response.get("grpc-status"))
    grpc_message = tx.trailers.get("grpc-message", tx.response.get("grpc-message"))
    duration = None
    if tx.request_time is not None and tx.response_time is not None:
        duration = max(tx.response_time - tx.request_time, 0.0)
    time, time_source = _time(tx)
    return Transaction(
        key=tx.key,
        final=final,
        origin=tx.origin,
        streamed=tx.streamed,
        time=time,
        time_source=time_source,
        direction=direction,
        authority=authority,
        client_namespace=prefix if direction == "outbound" else None,
        method=request.get(":method"),
        path=request.get(":path"),
        scheme=request.get(":scheme"),
        status=_int_or_none(tx.response.get(":status")),
        grpc_status=_int_or_none(grpc_status),
        grpc_message=grpc_message or None,
        http_version=_http_version(tx),
        duration_seconds=duration,
        request_body_bytes=tx.request_body_bytes,
        response_body_bytes=tx.response_body_bytes,
        request_truncated=tx.request_truncated,
        response_truncated=tx.response_truncated,
        request_content_length=_int_or_none(request.get("content-length")),
        response_content_length=_int_or_none(tx.response.get("content-length")),
        trace_id=header_trace_id,
        name_trace_id=name_trace_id,
        envoy_trace_id=tx.envoy_trace_id,
        client_address=tx.client_address,
        server_address=tx.server_address,
        redacted_headers=tuple(tx.redacted),
        missing=_missing(tx),
        sequence_gaps=tuple(tx.gaps),
        evicted=tx.evicted,
        pieces=_ordered(tx),
    )


def _fingerprint(buffered: HttpBufferedTrace) -> bytes:
    return (
        buffered.downstream_connection.SerializeToString(deterministic=True)
        + b"|"
        + buffered.upstream_connection.SerializeToString(deterministic=True)
    )


class Assembler:
    """Feed trace files in; get back the transactions each file completes or updates."""

    def __init__(
        self,
        max_open: int = DEFAULT_MAX_OPEN,
        max_open_pieces: int = DEFAULT_MAX_OPEN_PIECES,
        report_open: bool = True,
    ) -> None:
        """`report_open`: also return the records of transactions still open (a live index
        wants them; a reader that prints only final records saves their making)."""
        if max_open < 1 or max_open_pieces < 1:
            raise ValueError("max_open and max_open_pieces must be at least 1")
        self.report_open = report_open
        self.max_open = max_open
        self.max_open_pieces = max_open_pieces
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._open_pieces = 0
        self._stems: dict[str, _Seen] = {}
        # Unpaired halves of buffered traces (req_res names), by base stem and connection.
        self._halves: dict[tuple[str, bytes], list[str]] = {}
        self.files = 0
        self.traces = 0
        self.skipped_traces = 0  # socket traces and anything that is not HTTP
        self.evictions = 0

    @property
    def open_transactions(self) -> int:
        return len(self._open)

    def feed(
        self, name: str, data: bytes, mtime: float | None = None, source: str | None = None
    ) -> list[Transaction]:
        """Take in one file (`name`: its path or name; `source`: what records call it,
        `name` by default). Raises TraceFileError if it is not a trace file."""
        base_name = name.rpartition(os.sep)[2]
        traces = split_traces(name, data, parse_check=False)
        try:
            parsed = [TraceWrapper.FromString(raw) for raw in traces]
        except DecodeError as exc:
            raise TraceFileError(f"{name}: not a trace file: {exc}") from exc
        self.files += 1
        self.traces += len(traces)
        where = source or name
        emulator = parse_emulator_name(base_name)
        if emulator is not None and len(traces) == 1:
            results = self._emulator_piece(emulator, parsed[0], where, mtime)
        else:
            results = self._envoy_file(base_name, parsed, where, mtime)
        results.extend(self._evict_over_bounds())
        return results

    def flush(self) -> list[Transaction]:
        """Every transaction still open, as final (the input has ended)."""
        flushed = [self._finish(key) for key in list(self._open)]
        self._halves.clear()
        return flushed

    # --- Envoy's file_per_tap files: whole in themselves ---------------------------------

    def _envoy_file(
        self, name: str, traces: list[TraceWrapper], where: str, mtime: float | None
    ) -> list[Transaction]:
        named_id = _ENVOY_NAME_ID.search(name.split(".", 1)[0])
        found: dict[str, _Open] = {}
        for index, trace in enumerate(traces):
            kind = trace.WhichOneof("trace")
            if kind == "http_buffered_trace":
                tx = _Open(key=f"{where}#{index}", origin="envoy", streamed=False)
                if named_id is not None:
                    tx.envoy_trace_id = int(named_id.group(1))
                tx.pieces.append(PieceRef(where, index, PieceKind.BUFFERED))
                _add_buffered(tx, trace.http_buffered_trace)
                found[tx.key] = tx
            elif kind == "http_streamed_trace_segment":
                envoy_id = trace.http_streamed_trace_segment.trace_id
                key = f"{where}#{envoy_id:x}"
                tx = found.get(key) or _Open(key=key, origin="envoy", streamed=True)
                tx.envoy_trace_id = envoy_id
                found[key] = tx
                piece = _add_segment(tx, trace)
                tx.kinds.add(piece)
                tx.pieces.append(PieceRef(where, index, piece))
            else:
                self.skipped_traces += 1
                continue
            tx.earliest_mtime = mtime
        return [snapshot(tx, final=True) for tx in found.values()]

    # --- the emulator's files: one piece each --------------------------------------------

    def _emulator_piece(
        self, name: EmulatorName, trace: TraceWrapper, where: str, mtime: float | None
    ) -> list[Transaction]:
        kind = trace.WhichOneof("trace")
        if kind == "http_streamed_trace_segment":
            return self._segment(name, trace, where, mtime)
        if kind != "http_buffered_trace":
            self.skipped_traces += 1
            return []
        buffered = trace.http_buffered_trace
        half = name.half
        if half is Half.REQUEST and not buffered.HasField("response"):
            return self._half(name, buffered, PieceKind.BUFFERED_REQUEST, where, mtime)
        if half is Half.RESPONSE and not buffered.HasField("request"):
            return self._half(name, buffered, PieceKind.BUFFERED_RESPONSE, where, mtime)
        tx = _Open(key=where, origin="emulator", streamed=False, base=name.base)
        tx.pieces.append(PieceRef(where, 0, PieceKind.BUFFERED, name.sequence))
        tx.earliest_mtime = mtime
        _add_buffered(tx, buffered)
        return [snapshot(tx, final=True)]

    def _half(
        self,
        name: EmulatorName,
        buffered: HttpBufferedTrace,
        kind: PieceKind,
        where: str,
        mtime: float | None,
    ) -> list[Transaction]:
        pairing = (name.base, _fingerprint(buffered))
        waiting = self._halves.get(pairing, [])
        partner = self._nearest_partner(waiting, kind, name.sequence)
        if partner is None:
            tx = _Open(key=where, origin="emulator", streamed=False, base=name.base)
            tx.pairing = pairing
            self._open[tx.key] = tx
            self._halves.setdefault(pairing, []).append(tx.key)
        else:
            waiting.remove(partner)
            if not waiting:
                del self._halves[pairing]
            tx = self._open.pop(partner)
            self._open_pieces -= len(tx.pieces)
            tx.pairing = None
            tx.key = "+".join(sorted((tx.key, where)))
        tx.pieces.append(PieceRef(where, 0, kind, name.sequence))
        tx.earliest_mtime = _earliest(tx.earliest_mtime, mtime)
        _add_buffered(tx, buffered)
        if partner is not None:
            return [snapshot(tx, final=True)]
        self._open_pieces += 1
        return self._still_open(tx)

    def _nearest_partner(self, keys: list[str], kind: PieceKind, sequence: int) -> str | None:
        best: tuple[int, str] | None = None
        for key in keys:
            other = self._open[key].pieces[0]
            if other.kind is kind:
                continue
            distance = abs((other.sequence or 0) - sequence)
            if best is None or distance < best[0]:
                best = (distance, key)
        return None if best is None else best[1]

    def _segment(
        self, name: EmulatorName, trace: TraceWrapper, where: str, mtime: float | None
    ) -> list[Transaction]:
        envoy_id = trace.http_streamed_trace_segment.trace_id
        key = f"{name.base}#{envoy_id:x}"
        tx = self._open.get(key)
        if tx is None:
            tx = _Open(key=key, origin="emulator", streamed=True, base=name.base)
            tx.envoy_trace_id = envoy_id
            self._open[key] = tx
        else:
            self._open.move_to_end(key)
        piece = _add_segment(tx, trace)
        tx.kinds.add(piece)
        tx.pieces.append(PieceRef(where, 0, piece, name.sequence))
        tx.earliest_mtime = _earliest(tx.earliest_mtime, mtime)
        self._open_pieces += 1
        numbers = tx.sequences.get(name.stem)
        if numbers is None:
            numbers = tx.sequences[name.stem] = []
            self._stems.setdefault(name.stem, _Seen()).users += 1
        numbers.append(name.sequence)
        self._stems[name.stem].add(name.sequence)
        if self._proven_whole(tx):
            return [self._finish(key)]
        return self._still_open(tx)

    def _still_open(self, tx: _Open) -> list[Transaction]:
        return [snapshot(tx, final=False)] if self.report_open else []

    def _proven_whole(self, tx: _Open) -> bool:
        """Request headers through response trailers, every number between them its own."""
        if not {PieceKind.REQUEST_HEADERS, PieceKind.RESPONSE_TRAILERS} <= tx.kinds:
            return False
        for numbers in tx.sequences.values():
            if max(numbers) - min(numbers) + 1 != len(set(numbers)):
                return False  # a number between them is another transaction's, or unread
        # In req_res names each half counts on its own; in plain names both share one stem.
        request = [piece for piece in tx.pieces if piece.kind in _REQUEST_PIECES]
        response = [piece for piece in tx.pieces if piece.kind not in _REQUEST_PIECES]
        if len(tx.sequences) == 1:
            request = response = tx.pieces
        return (
            bool(request)
            and bool(response)
            and min(request, key=_number).kind is PieceKind.REQUEST_HEADERS
            and max(response, key=_number).kind is PieceKind.RESPONSE_TRAILERS
        )

    # --- finishing ----------------------------------------------------------------------

    def _finish(self, key: str, evicted: bool = False) -> Transaction:
        tx = self._open.pop(key)
        self._open_pieces -= len(tx.pieces)
        tx.evicted = evicted
        for stem, numbers in tx.sequences.items():
            seen = self._stems[stem]
            for first, last in seen.holes(min(numbers), max(numbers)):
                tx.gaps.append(SequenceGap(stem, first, last))
            seen.users -= 1
            if seen.users == 0:
                del self._stems[stem]
        return snapshot(tx, final=True)

    def _evict_over_bounds(self) -> list[Transaction]:
        evicted = []
        while self._open and (
            len(self._open) > self.max_open or self._open_pieces > self.max_open_pieces
        ):
            key = next(iter(self._open))
            self._forget_half(key)
            evicted.append(self._finish(key, evicted=True))
            self.evictions += 1
        return evicted

    def _forget_half(self, key: str) -> None:
        pairing = self._open[key].pairing
        if pairing is None:
            return
        keys = self._halves[pairing]
        keys.remove(key)
        if not keys:
            del self._halves[pairing]


def _number(piece: PieceRef) -> int:
    return piece.sequence or 0


def _earliest(current: float | None, candidate: float | None) -> float | None:
    if current is None:
        return candidate
    if candidate is None:
        return current
    return min(current, candidate)
