"""The sending side of StreamTaps, shared by relay and replay: the identifier a stream
starts with, request encoding, and one call on a grpc.aio channel.

A request is encoded by concatenating its serialized fields (identifier, trace_id, trace) in
field order, which is exactly what protobuf's own serializer produces; the trace bytes are
passed through untouched, so what a tool read is byte for byte what the emulator writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from tap_emulator._proto.envoy.config.core.v3.base_pb2 import Node
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest

METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"

# No retries of ours hidden in grpc; fast reconnects are the tools' own business.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_retries", 0),
    ("grpc.max_send_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_TRACE_ID_TAG = b"\x10"  # field 2, varint
_TRACE_TAG = b"\x1a"  # field 3, length-delimited


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


def node_from_json(node: dict[str, Any]) -> Node:
    """Envoy's node as its admin endpoint shows it, in our Node (unknown fields ignored);
    ValueError says which field could not be read."""
    parsed = Node()
    try:
        json_format.ParseDict(node, parsed, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return parsed


def identifier_field(node: Node, tap_id: str) -> bytes:
    """The serialized `identifier` field (field 1) of a StreamTapsRequest."""
    request = StreamTapsRequest()
    request.identifier.node.CopyFrom(node)
    request.identifier.tap_id = tap_id
    return request.SerializeToString(deterministic=True)


def encode_request(trace: bytes, trace_id: int, identifier: bytes = b"") -> bytes:
    """A serialized StreamTapsRequest around an already serialized TraceWrapper."""
    parts = [identifier]
    if trace_id:
        parts += [_TRACE_ID_TAG, varint(trace_id)]
    parts += [_TRACE_TAG, varint(len(trace)), trace]
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a StreamTaps call ended."""

    code: str
    details: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"


def outcome_of(error: BaseException) -> Outcome:
    if isinstance(error, grpc.aio.AioRpcError):
        return Outcome(error.code().name, error.details() or "")
    return Outcome("UNKNOWN", f"{type(error).__name__}: {error}")


class TapCall:
    """One StreamTaps call: write serialized requests, then half-close and await the answer."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        open_call = channel.stream_unary(
            METHOD, request_serializer=None, response_deserializer=None
        )
        self._call: Any = open_call(None)
        self.written = 0

    async def write(self, request: bytes) -> None:
        """Hand one request to the transport; raises (AioRpcError...) if the call ended."""
        await self._call.write(request)
        self.written += 1

    def done(self) -> bool:
        return bool(self._call.done())

    async def finish(self) -> Outcome:
        """Half-close and wait for the emulator's answer (OK: everything is on disk)."""
        try:
            await self._call.done_writing()
            await self._call
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
            return outcome_of(exc)
        return Outcome("OK", "")

    async def ended(self) -> Outcome:
        """The outcome of a call that already ended (or cancels and reports it)."""
        try:
            await self._call
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
            return outcome_of(exc)
        return Outcome("OK", "")

    def cancel(self) -> None:
        self._call.cancel()


def open_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
