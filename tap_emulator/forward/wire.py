"""Forward, wire: StreamTapsRequests built around trace bytes that are already serialized.

A request is its fields concatenated in field order (identifier = 1, trace_id = 2, trace = 3),
which is what protobuf's serializer writes; the trace is the payload exactly as the files hold
it, never parsed again. The identifier is serialized once per stream.
"""

from __future__ import annotations

from typing import Protocol

from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest

_TRACE_ID_TAG = b"\x10"  # field 2, varint
_TRACE_TAG = b"\x1a"  # field 3, length-delimited
# Tags, lengths and the trace id around a payload, at most.
FRAMING_BYTES = 1 + 10 + 1 + 10


class SenderLike(Protocol):
    """Who sent a trace: the proxy's node and the tap id of its capture point."""

    @property
    def node_id(self) -> str: ...

    @property
    def cluster(self) -> str: ...

    @property
    def namespace(self) -> str | None: ...

    @property
    def tap_id(self) -> str: ...


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def identifier_field(sender: SenderLike) -> bytes:
    """The serialized `identifier` field a stream starts with; empty for an unknown sender
    (a tool then sees a stream without one, as the emulator did)."""
    if not (sender.node_id or sender.cluster or sender.namespace is not None or sender.tap_id):
        return b""
    request = StreamTapsRequest()
    identifier = request.identifier
    identifier.SetInParent()
    if sender.node_id:
        identifier.node.id = sender.node_id
    if sender.cluster:
        identifier.node.cluster = sender.cluster
    if sender.namespace is not None:
        identifier.node.metadata.fields["NAMESPACE"].string_value = sender.namespace
    identifier.tap_id = sender.tap_id
    return request.SerializeToString(deterministic=True)


def encode_request(payload: bytes, trace_id: int, identifier: bytes = b"") -> bytes:
    """A serialized StreamTapsRequest holding `payload` (a serialized TraceWrapper) as its
    trace."""
    if trace_id:
        head = identifier + _TRACE_ID_TAG + varint(trace_id) + _TRACE_TAG + varint(len(payload))
    else:
        head = identifier + _TRACE_TAG + varint(len(payload))
    return head + payload
