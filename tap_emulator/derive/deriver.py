"""Derive: turn one decoded StreamTapsRequest into the files it becomes.

Combines the pure naming rules (naming.py), the bounded correlation state (correlate.py)
and redaction (redact.py). It never touches the network or the disk: the numbers it plans
are made unique on disk by the writers (write/numbering.py), not here.

What becomes a file:
- a buffered HTTP trace: one file (two in the req_res format: request half, response half);
- a streamed HTTP segment: one file, named after its transaction's request headers;
- a socket trace: one file named `socket-trace-<envoyTraceIdHex>-<seq>.pb`;
- a trace with nothing recognisable in it (fields of a newer Envoy): one file named
  `empty-trace-<envoyTraceIdHex>-<seq>.pb`, so nothing it carried is lost;
- a message with no trace at all (an identifier alone), or an empty one (`"trace": {}`): nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter, TraceName
from tap_emulator.derive.naming import (
    EMPTY_PREFIX,
    SOCKET_PREFIX,
    Half,
    Identity,
    NameFormat,
    authority_from,
    build_stem,
    prefix_for,
    trace_id_from,
)
from tap_emulator.derive.redact import find_and_redact, redact_headers
from tap_emulator.labels import Direction, TraceKind


@dataclass(frozen=True, slots=True)
class NamingPolicy:
    """The naming and redaction settings derive needs (a slice of the full Settings)."""

    name_format: NameFormat = NameFormat.PLAIN
    trace_id_headers: tuple[str, ...] = ()
    redact_headers: frozenset[str] = frozenset()
    default_direction: Direction = Direction.INBOUND

    def wanted_headers(self) -> tuple[str, ...]:
        return (":authority", "host", *self.trace_id_headers)


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file to publish: `<stem>-<sequence>.pb` holding `payload`."""

    stem: str
    sequence: int
    payload: bytes


@dataclass(slots=True)
class Derivation:
    """What one message became, and what naming had to do along the way (for metrics)."""

    kind: TraceKind
    files: list[PlannedFile] = field(default_factory=list)
    sanitized: int = 0
    truncated: int = 0
    redactions: int = 0


_REQUEST_PIECES = frozenset({None, "request_headers", "request_body_chunk", "request_trailers"})
_HEADER_PIECES = frozenset(
    {"request_headers", "request_trailers", "response_headers", "response_trailers"}
)
_SOCKET_KINDS = frozenset({"socket_buffered_trace", "socket_streamed_trace_segment"})


class Deriver:
    """Names every trace of every stream; one instance serves the whole server."""

    def __init__(
        self, policy: NamingPolicy, sequences: SequenceCounter, segments: SegmentNames
    ) -> None:
        self._policy = policy
        self._wanted = frozenset(policy.wanted_headers())
        self._split = policy.name_format is NameFormat.REQ_RES
        self._sequences = sequences
        self._segments = segments

    def derive(self, request: StreamTapsRequest, identity: Identity, stream: int) -> Derivation:
        if not request.HasField("trace"):
            return Derivation(TraceKind.NONE)
        trace = request.trace
        kind = trace.WhichOneof("trace")
        if kind == "http_buffered_trace":
            return self._buffered(trace, request.trace_id, identity)
        if kind == "http_streamed_trace_segment":
            return self._segment(trace, request.trace_id, identity, stream)
        if kind in _SOCKET_KINDS:
            socket = getattr(trace, kind)
            envoy_id = socket.trace_id or request.trace_id
            return self._fallback(TraceKind.SOCKET, SOCKET_PREFIX, envoy_id, trace)
        if trace.ByteSize() == 0:
            return Derivation(TraceKind.NONE)  # an empty trace holds nothing worth a file
        return self._fallback(TraceKind.OTHER, EMPTY_PREFIX, request.trace_id, trace)

    def forget_stream(self, stream: int) -> None:
        self._segments.forget_stream(stream)

    # --- per kind -----------------------------------------------------------------------

    def _buffered(self, trace: TraceWrapper, envoy_id: int, identity: Identity) -> Derivation:
        buffered = trace.http_buffered_trace
        names = self._policy.redact_headers
        found, redactions = find_and_redact(buffered.request.headers, self._wanted, names)
        name = self._name(found, envoy_id, identity)
        result = Derivation(TraceKind.BUFFERED)
        if names:
            redactions += redact_headers(buffered.request.trailers, names)
            redactions += redact_headers(buffered.response.headers, names)
            redactions += redact_headers(buffered.response.trailers, names)
        result.redactions = redactions
        if not self._split:
            self._add(result, name, None, trace.SerializeToString())
            return result
        for half, dropped in ((Half.REQUEST, "response"), (Half.RESPONSE, "request")):
            part = TraceWrapper()
            part.http_buffered_trace.CopyFrom(trace.http_buffered_trace)
            part.http_buffered_trace.ClearField(dropped)
            self._add(result, name, half, part.SerializeToString())
        return result

    def _segment(
        self, trace: TraceWrapper, request_id: int, identity: Identity, stream: int
    ) -> Derivation:
        segment = trace.http_streamed_trace_segment
        envoy_id = segment.trace_id or request_id
        piece = segment.WhichOneof("message_piece")
        names = self._policy.redact_headers
        result = Derivation(TraceKind.STREAMED_SEGMENT)
        found: dict[str, str] = {}
        if piece == "request_headers":
            found, result.redactions = find_and_redact(
                segment.request_headers.headers, self._wanted, names
            )
        elif piece in _HEADER_PIECES:
            result.redactions = redact_headers(getattr(segment, piece).headers, names)
        name = self._segments.get(stream, envoy_id)
        if name is None:
            name = self._name(found, envoy_id, identity)
            self._segments.remember(stream, envoy_id, name)
        half = None
        if self._split:
            half = Half.REQUEST if piece in _REQUEST_PIECES else Half.RESPONSE
        self._add(result, name, half, trace.SerializeToString())
        return result

    def _fallback(
        self, kind: TraceKind, prefix: str, envoy_id: int, trace: TraceWrapper
    ) -> Derivation:
        result = Derivation(kind)
        self._add(result, TraceName(prefix, format(envoy_id, "x")), None, trace.SerializeToString())
        return result

    # --- shared -------------------------------------------------------------------------

    def _name(self, found: dict[str, str], envoy_id: int, identity: Identity) -> TraceName:
        trace_id = trace_id_from(found, self._policy.trace_id_headers, envoy_id)
        prefix = prefix_for(identity.direction, authority_from(found), identity.client_namespace)
        return TraceName(prefix, trace_id)

    def _add(self, result: Derivation, name: TraceName, half: Half | None, payload: bytes) -> None:
        stem = build_stem(name.prefix, name.trace_id, half)
        result.sanitized += stem.sanitized
        result.truncated += stem.truncated
        sequence = self._sequences.next(stem.text)
        result.files.append(PlannedFile(stem.text, sequence, payload))
