"""StreamTaps messages as raw bytes, and a client that sends them one at a time, when told.

The reliability tests need what the subprocess clients cannot give: a stream that sends one
message, waits while the test does something else (fills a disk, churns another stream, sends
a signal) and then sends the next; and messages no encoder would build (millions of empty
headers, a 16 MiB tap_id). Messages are built with the repository's generated code (this
process never imports xds-protos) or written byte by byte on the wire.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import grpc

from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest

METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
NODE_ID = "sidecar~10.0.0.7~sleep-7d4f.ns~ns.svc.cluster.local"
_END = object()


def buffered(
    authority: str,
    trace_id: str,
    *,
    n: int = 1,
    first: bool = False,
    body_bytes: int = 0,
    direction: str = "inbound",
) -> bytes:
    """One buffered trace of `authority` with x-b3-traceid `trace_id`; `first` adds the
    identifier, as Envoy sends it on a stream's first message."""
    request = StreamTapsRequest(trace_id=n)
    if first:
        request.identifier.tap_id = f"reliability-{direction}"
        request.identifier.node.id = NODE_ID
    http = request.trace.http_buffered_trace
    http.request.headers.add(key=":authority", value=authority)
    http.request.headers.add(key="x-b3-traceid", value=trace_id)
    if body_bytes:
        http.request.body.as_bytes = b"b" * body_bytes
    http.response.headers.add(key=":status", value="200")
    return request.SerializeToString()


def segment_headers(authority: str, trace_id: str, envoy_id: int, *, first: bool = False) -> bytes:
    """The request-headers segment that opens a streamed transaction."""
    request = StreamTapsRequest()
    if first:
        request.identifier.tap_id = "reliability-inbound"
        request.identifier.node.id = NODE_ID
    segment = request.trace.http_streamed_trace_segment
    segment.trace_id = envoy_id
    segment.request_headers.headers.add(key=":authority", value=authority)
    segment.request_headers.headers.add(key="x-b3-traceid", value=trace_id)
    return request.SerializeToString()


def segment_body(envoy_id: int, data: bytes = b"chunk") -> bytes:
    """A later segment of a streamed transaction: a request body chunk, no headers."""
    request = StreamTapsRequest()
    segment = request.trace.http_streamed_trace_segment
    segment.trace_id = envoy_id
    segment.request_body_chunk.as_bytes = data
    return request.SerializeToString()


def identifier_only(tap_id: str = "reliability-inbound") -> bytes:
    request = StreamTapsRequest()
    request.identifier.tap_id = tap_id
    request.identifier.node.id = NODE_ID
    return request.SerializeToString()


def empty_trace(n: int = 1) -> bytes:
    """A message whose trace is present and empty (`"trace": {}` in JSON)."""
    request = StreamTapsRequest(trace_id=n)
    request.trace.SetInParent()
    return request.SerializeToString()


KEEPALIVE = b""  # the smallest message: no identifier, no trace (a 5-byte gRPC frame)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def empty_headers_bomb(total_bytes: int) -> bytes:
    """A valid StreamTapsRequest of about `total_bytes` whose buffered trace's request holds
    nothing but empty headers (2 bytes each on the wire): millions of fields to decode."""
    # StreamTapsRequest.trace = 3; TraceWrapper.http_buffered_trace = 1;
    # HttpBufferedTrace.request = 1; HttpBufferedTrace.Message.headers = 1.
    headers = b"\x0a\x00" * (max(0, total_bytes - 16) // 2)
    return _field(3, _field(1, _field(1, headers)))


def long_tap_id(total_bytes: int) -> bytes:
    """A StreamTapsRequest whose identifier's tap_id is `total_bytes` of dashes."""
    request = StreamTapsRequest()
    request.identifier.tap_id = "-" * total_bytes
    return request.SerializeToString()


@dataclass
class Answer:
    code: str
    details: str


class HeldStream:
    """One StreamTaps call whose messages the test hands over one by one (`send`), ended by
    `finish` (half-close, then the server's answer) or `cancel`."""

    def __init__(
        self, target: str, timeout: float = 60.0, channel: grpc.Channel | None = None
    ) -> None:
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )
        self._messages: queue.Queue[Any] = queue.Queue()
        call = self.channel.stream_unary(
            METHOD, request_serializer=None, response_deserializer=None
        )
        self.sent = 0
        self._future = call.future(self._requests(), timeout=timeout)

    def _requests(self) -> Any:
        while True:
            item = self._messages.get()
            if item is _END:
                return
            self.sent += 1
            yield item

    def send(self, *messages: bytes) -> HeldStream:
        for message in messages:
            self._messages.put(message)
        return self

    def finish(self, timeout: float = 60.0) -> Answer:
        self._messages.put(_END)
        return self.answer(timeout)

    def answer(self, timeout: float = 60.0) -> Answer:
        try:
            self._future.result(timeout)
            answer = Answer("OK", "")
        except grpc.RpcError as error:
            answer = Answer(error.code().name, error.details() or "")
        except grpc.FutureTimeoutError:
            answer = Answer("NO_ANSWER", f"no answer within {timeout}s")
        self.close()
        return answer

    def done(self) -> bool:
        return bool(self._future.done())

    def cancel(self) -> None:
        self._future.cancel()
        self.close()

    def close(self) -> None:
        self._messages.put(_END)
        if self._own_channel:
            self.channel.close()


def send_stream(target: str, messages: list[bytes], timeout: float = 60.0) -> Answer:
    """One whole call: every message, then the server's answer."""
    return HeldStream(target, timeout).send(*messages).finish(timeout)


class Repeater:
    """Sends the same message on new streams, one after another, until stopped (an attacker
    that reconnects each time its stream is refused). Counts the answers it got."""

    def __init__(self, target: str, message: bytes) -> None:
        self._target = target
        self._message = message
        self._stop = threading.Event()
        self.answers: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Repeater:
        self._thread.start()
        return self

    def _run(self) -> None:
        with grpc.insecure_channel(
            self._target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as channel:
            while not self._stop.is_set():
                stream = HeldStream(self._target, 30.0, channel)
                self.answers.append(stream.send(self._message).finish(30.0).code)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(40)
        return self.answers
