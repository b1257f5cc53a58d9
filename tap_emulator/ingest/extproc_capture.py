"""Ingest, ext_proc, pure: one Process stream's messages become what a tap sink would receive.

Envoy's ext_proc filter in observability mode opens one `ExternalProcessor/Process` stream per
HTTP transaction and sends its parts as they pass: request headers, body chunks, trailers, then
the response's. `Assembly` turns them into Envoy tap traces: one `HttpBufferedTrace` for the
whole transaction, or one `HttpStreamedTraceSegment` per part, as the capture point's filter
asked (`x-tap-streaming`). What the capture point asked for travels as the stream's static gRPC
metadata (`x-tap-*`, set per EnvoyFilter patch by the filter chart); who sent it comes from the
request attributes (`xds.node.*`) of the first request-side message; the trace id the upstream
received comes from the tracer's `x-b3-*` metadata of the side stream itself.

What differs from Envoy's own tap, on purpose:
- header values arrive as bytes (`raw_value`); they are stored as text (`value`), as the tap
  does, wherever they are valid UTF-8;
- the request headers are a snapshot taken before the router, so the tracer's `x-b3-traceid`,
  `x-b3-spanid` and `x-b3-sampled` are added from the side stream's metadata when the request
  carried none: they are what the upstream received (and what Envoy's buffered tap shows), and
  they give both ends of a hop the same trace id in their file names;
- an empty body message that only says "end of stream" is not a segment of its own.
Nothing here does I/O; the gRPC handler (extproc.py) feeds it and decides what to keep.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from tap_emulator._proto.envoy.config.core.v3.address_pb2 import Address
from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from tap_emulator._proto.envoy.data.tap.v3.common_pb2 import Body, Connection
from tap_emulator._proto.envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
)
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.labels import BodyHalf as Half
from tap_emulator.labels import Direction

ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"

TAP_ID = "x-tap-id"
STREAMING = "x-tap-streaming"
MAX_RX_BYTES = "x-tap-max-buffered-rx-bytes"
MAX_TX_BYTES = "x-tap-max-buffered-tx-bytes"
RECORD_TIMES = "x-tap-record-headers-received-time"
RECORD_CONNECTION = "x-tap-record-downstream-connection"

_B3_TRACE_ID, _B3_SPAN_ID, _B3_PARENT, _B3_SAMPLED = (
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
)
_LISTENER_DIRECTIONS = {1.0: Direction.INBOUND, 2.0: Direction.OUTBOUND}


@dataclass(frozen=True, slots=True)
class CapturePoint:
    """What one capture point (an EnvoyFilter patch) asked for, from the stream's metadata."""

    tap_id: str = ""
    streaming: bool = False
    max_request_body_bytes: int = 1024 * 1024
    max_response_body_bytes: int = 1024 * 1024
    record_headers_received_time: bool = False
    record_downstream_connection: bool = False


@dataclass(frozen=True, slots=True)
class Tracer:
    """The tracer's context of the side stream: it is a child span of the request."""

    trace_id: str | None = None
    upstream_span_id: str | None = None  # the side stream's parent: the upstream's span
    sampled: str | None = None


@dataclass(frozen=True, slots=True)
class Proxy:
    """Who sent the stream, from the request attributes."""

    node_id: str = ""
    cluster: str = ""
    namespace: str | None = None
    listener_direction: Direction | None = None


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("true", "1", "yes", "on")


def _size(value: str | None, default: int, cap: int) -> int:
    if value is None:
        return min(default, cap)
    try:
        return max(0, min(int(value.strip()), cap))
    except ValueError:
        return min(default, cap)


@functools.lru_cache(maxsize=256)  # a capture point's metadata is static: a few per proxy
def _capture_point(wishes: tuple[str | None, ...], max_body_bytes: int) -> CapturePoint:
    tap_id, streaming, max_rx, max_tx, record_times, record_connection = wishes
    return CapturePoint(
        tap_id=tap_id or "",
        streaming=_flag(streaming, False),
        max_request_body_bytes=_size(max_rx, 1024 * 1024, max_body_bytes),
        max_response_body_bytes=_size(max_tx, 1024 * 1024, max_body_bytes),
        record_headers_received_time=_flag(record_times, False),
        record_downstream_connection=_flag(record_connection, False),
    )


def read_metadata(
    pairs: Iterable[tuple[str, str | bytes]], *, max_body_bytes: int
) -> tuple[CapturePoint, Tracer]:
    """The capture point's wishes and the tracer's context, from a stream's gRPC metadata.

    Anything absent or malformed takes its default; body limits never exceed `max_body_bytes`.
    gRPC hands keys over in lowercase, and values as text for every key not ending in `-bin`
    (the only kind read here); a key given twice keeps its last value.
    """
    get = dict(pairs).get
    wishes = (
        get(TAP_ID),
        get(STREAMING),
        get(MAX_RX_BYTES),
        get(MAX_TX_BYTES),
        get(RECORD_TIMES),
        get(RECORD_CONNECTION),
    )
    tracer = Tracer(_str(get(_B3_TRACE_ID)), _str(get(_B3_PARENT)), _str(get(_B3_SAMPLED)))
    return _capture_point(tuple(map(_str, wishes)), max_body_bytes), tracer


def _str(value: str | bytes | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def _attributes(request: ProcessingRequest) -> Struct | None:
    if ATTRIBUTES_KEY in request.attributes:
        return request.attributes[ATTRIBUTES_KEY]
    return None


def _string(struct: Struct, key: str) -> str | None:
    value = struct.fields.get(key)
    if value is not None and value.WhichOneof("kind") == "string_value":
        return value.string_value
    return None


def proxy_from(attributes: Struct) -> Proxy:
    direction = None
    value = attributes.fields.get("xds.listener_direction")
    if value is not None and value.WhichOneof("kind") == "number_value":
        direction = _LISTENER_DIRECTIONS.get(value.number_value)
    return Proxy(
        node_id=_string(attributes, "xds.node.id") or "",
        cluster=_string(attributes, "xds.node.cluster") or "",
        namespace=_string(attributes, "xds.node.metadata.NAMESPACE"),
        listener_direction=direction,
    )


Headers = RepeatedCompositeFieldContainer[HeaderValue]
Pieces = list[StreamTapsRequest]


def _copy_headers(source: HeaderMap, target: Headers) -> None:
    """Append `source`'s headers to a repeated HeaderValue field, values as text where they
    are UTF-8 (as Envoy's tap writes them), as bytes otherwise."""
    add = target.add
    for header in source.headers:
        raw = header.raw_value
        if not raw:
            add(key=header.key, value=header.value)
            continue
        try:
            add(key=header.key, value=raw.decode("utf-8"))
        except UnicodeDecodeError:
            add(key=header.key, raw_value=raw)


def _add_tracer_headers(headers: Headers, tracer: Tracer) -> None:
    """Add the tracer's headers the upstream received, where the request carried none."""
    present = {header.key.lower() for header in headers}
    if tracer.trace_id is None or _B3_TRACE_ID in present:
        return
    add = headers.add
    add(key=_B3_TRACE_ID, value=tracer.trace_id)
    if tracer.upstream_span_id is not None and _B3_SPAN_ID not in present:
        add(key=_B3_SPAN_ID, value=tracer.upstream_span_id)
    if tracer.sampled is not None and _B3_SAMPLED not in present:
        add(key=_B3_SAMPLED, value=tracer.sampled)


def _socket_address(text: str | None, target: Address) -> None:
    """Fill an Address from the `ip:port` of a connection attribute."""
    if not text:
        return
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return
    socket = target.socket_address
    socket.address = host.strip("[]")
    socket.port_value = int(port)


class Assembly:
    """One HTTP transaction, assembled from the Process stream's messages as they arrive."""

    def __init__(self, point: CapturePoint, tracer: Tracer, trace_id: int) -> None:
        self.point = point
        self.tracer = tracer
        self.trace_id = trace_id
        self.proxy: Proxy | None = None
        self.complete = False  # the response's last message arrived
        self.parts = 0  # messages that carried a part of the transaction
        self.held_bytes = 0  # body bytes held for a buffered trace
        self.truncated: set[Half] = set()
        self._whole = StreamTapsRequest(trace_id=trace_id)
        self._trace = self._whole.trace.http_buffered_trace
        self._request_body = bytearray()
        self._response_body = bytearray()
        self._request_time: float | None = None  # wall-clock seconds, from request.time
        self._request_arrived: float | None = None
        self._attributes: Struct | None = None

    # --- feeding ------------------------------------------------------------------------

    def add(self, request: ProcessingRequest, arrived_wall_seconds: float) -> Pieces:
        """Take one message; returns the segments to write now (streaming capture points), as
        the StreamTapsRequests a tap sink would have received, or nothing (buffered: the whole
        trace comes from `buffered_trace` at the end)."""
        if self._attributes is None:  # they come once, with the first request-side message
            attributes = _attributes(request)
            if attributes is not None:
                self._attributes = attributes
                self.proxy = proxy_from(attributes)
        part = request.WhichOneof("request")
        if part is None:
            return []
        self.parts += 1
        if part == "request_headers":
            return self._request_headers(request, arrived_wall_seconds)
        if part == "response_headers":
            return self._response_headers(request, arrived_wall_seconds)
        if part == "request_body" or part == "response_body":
            return self._body(request, part)
        return self._trailers(request, part)

    def _request_headers(self, request: ProcessingRequest, arrived: float) -> Pieces:
        headers = request.request_headers
        self._request_arrived = arrived
        self._request_time = self._attribute_time()
        if self.point.streaming:
            wrapper = self._segment()
            segment_headers = wrapper.trace.http_streamed_trace_segment.request_headers.headers
            _copy_headers(headers.headers, segment_headers)
            _add_tracer_headers(segment_headers, self.tracer)
            return [wrapper]
        message = self._trace.request
        _copy_headers(headers.headers, message.headers)
        _add_tracer_headers(message.headers, self.tracer)
        if self.point.record_headers_received_time:
            message.headers_received_time.FromNanoseconds(
                int((self._request_time or arrived) * 1e9)
            )
        return []

    def _response_headers(self, request: ProcessingRequest, arrived: float) -> Pieces:
        headers = request.response_headers
        self.complete = headers.end_of_stream
        if self.point.streaming:
            wrapper = self._segment()
            target = wrapper.trace.http_streamed_trace_segment.response_headers.headers
            _copy_headers(headers.headers, target)
            return [wrapper]
        message = self._trace.response
        _copy_headers(headers.headers, message.headers)
        if self.point.record_headers_received_time:
            message.headers_received_time.FromNanoseconds(int(self._response_time(arrived) * 1e9))
        return []

    def _body(self, request: ProcessingRequest, part: str) -> Pieces:
        body = getattr(request, part)
        is_request = part == "request_body"
        if not is_request:
            self.complete = body.end_of_stream
        chunk = body.body
        if not chunk:
            return []  # "end of stream" alone: nothing to write
        half = Half.REQUEST if is_request else Half.RESPONSE
        limit = (
            self.point.max_request_body_bytes if is_request else self.point.max_response_body_bytes
        )
        if self.point.streaming:
            wrapper = self._segment()
            segment = wrapper.trace.http_streamed_trace_segment
            target = segment.request_body_chunk if is_request else segment.response_body_chunk
            target.as_bytes = chunk[:limit]
            if len(chunk) > limit:
                target.truncated = True
                self.truncated.add(half)
            return [wrapper]
        held = self._request_body if is_request else self._response_body
        room = max(0, limit - len(held))
        if len(chunk) > room:
            self.truncated.add(half)
            chunk = chunk[:room]
        held += chunk
        self.held_bytes += len(chunk)
        return []

    def _trailers(self, request: ProcessingRequest, part: str) -> Pieces:
        is_request = part == "request_trailers"
        if not is_request:
            self.complete = True
        trailers = getattr(request, part).trailers
        if self.point.streaming:
            wrapper = self._segment()
            segment = wrapper.trace.http_streamed_trace_segment
            target = segment.request_trailers if is_request else segment.response_trailers
            _copy_headers(trailers, target.headers)
            return [wrapper]
        message = self._trace.request if is_request else self._trace.response
        _copy_headers(trailers, message.trailers)
        return []

    # --- what comes out -----------------------------------------------------------------

    def buffered_trace(self) -> StreamTapsRequest:
        """The whole transaction as one buffered trace (what it holds so far, if unfinished);
        call once."""
        trace = self._trace
        for message, held, half in (
            (trace.request, self._request_body, Half.REQUEST),
            (trace.response, self._response_body, Half.RESPONSE),
        ):
            if held or half in self.truncated:
                body: Body = message.body
                body.as_bytes = bytes(held)
                body.truncated = half in self.truncated
        if self.point.record_downstream_connection and self._attributes is not None:
            self._connection(trace.downstream_connection)
        return self._whole

    def release(self) -> int:
        """Forget the held bodies (the trace was written or dropped); returns their size."""
        held = self.held_bytes
        self._request_body = bytearray()
        self._response_body = bytearray()
        self.held_bytes = 0
        return held

    def _segment(self) -> StreamTapsRequest:
        wrapper = StreamTapsRequest(trace_id=self.trace_id)
        wrapper.trace.http_streamed_trace_segment.trace_id = self.trace_id
        return wrapper

    def _connection(self, connection: Connection) -> None:
        attributes = self._attributes
        assert attributes is not None
        _socket_address(_string(attributes, "destination.address"), connection.local_address)
        _socket_address(_string(attributes, "source.address"), connection.remote_address)

    def _attribute_time(self) -> float | None:
        if self._attributes is None:
            return None
        text = _string(self._attributes, "request.time")
        if not text:
            return None
        stamp = Timestamp()
        with contextlib.suppress(ValueError, DecodeError):
            stamp.FromJsonString(text)
            return stamp.ToNanoseconds() / 1e9
        return None

    def _response_time(self, arrived: float) -> float:
        """The response's headers-received time on the proxy's clock where it is known: the
        request's own time plus what passed between the two messages' arrivals here."""
        if self._request_time is not None and self._request_arrived is not None:
            return self._request_time + (arrived - self._request_arrived)
        return arrived
