"""Forward, frames: how the emulator hands traces to its forwarding process over a socket.

Every frame is a kind (1 byte) and the length of its body (4 bytes, little-endian), then the
body. A sender is announced once, with the index its traces then carry; a trace is the
sender's index, its trace id and the payload, as the files hold it; a drain asks the process
to forward what it has within so many seconds, end its streams and exit.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

HEADER = struct.Struct("<BI")
_INDEX = struct.Struct("<I")
_TRACE = struct.Struct("<IQ")
_SECONDS = struct.Struct("<d")

SENDER = 1
TRACE = 2
DRAIN = 3


@dataclass(frozen=True, slots=True)
class Announced:
    """A sender as the forwarding process knows it."""

    node_id: str
    cluster: str
    namespace: str | None
    tap_id: str


def sender_frame(
    index: int, node_id: str, cluster: str, namespace: str | None, tap_id: str
) -> bytes:
    body = _INDEX.pack(index) + json.dumps([node_id, cluster, namespace, tap_id]).encode()
    return HEADER.pack(SENDER, len(body)) + body


def trace_head(index: int, trace_id: int, payload_bytes: int) -> bytes:
    """The bytes that go before a trace's payload (kept apart: the payload is not copied
    until the frames of one turn of the event loop are written together)."""
    return HEADER.pack(TRACE, _TRACE.size + payload_bytes) + _TRACE.pack(index, trace_id)


def drain_frame(within_seconds: float) -> bytes:
    return HEADER.pack(DRAIN, _SECONDS.size) + _SECONDS.pack(within_seconds)


def read_sender(body: bytes) -> tuple[int, Announced]:
    (index,) = _INDEX.unpack_from(body)
    node_id, cluster, namespace, tap_id = json.loads(body[_INDEX.size :])
    return index, Announced(node_id, cluster, namespace, tap_id)


def read_drain(body: bytes) -> float:
    (seconds,) = _SECONDS.unpack_from(body)
    return float(seconds)


@dataclass(frozen=True, slots=True)
class Trace:
    sender: int
    trace_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Other:
    kind: int
    body: bytes


class FrameReader:
    """Splits what arrives on the socket into frames, however it is cut; each payload is
    copied once, out of the receive buffer."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Trace | Other]:
        buffer = self._buffer
        buffer += data
        frames: list[Trace | Other] = []
        offset = 0
        with memoryview(buffer) as view:
            while len(buffer) - offset >= HEADER.size:
                kind, length = HEADER.unpack_from(view, offset)
                start, end = offset + HEADER.size, offset + HEADER.size + length
                if end > len(buffer):
                    break
                if kind == TRACE:
                    index, trace_id = _TRACE.unpack_from(view, start)
                    frames.append(Trace(index, trace_id, bytes(view[start + _TRACE.size : end])))
                else:
                    frames.append(Other(kind, bytes(view[start:end])))
                offset = end
        if offset:
            del buffer[:offset]
        return frames
