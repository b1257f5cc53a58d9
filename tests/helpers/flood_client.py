"""Floods a StreamTaps port with messages that are cheap to send and costly to decode.

Run as a subprocess, so that the test's own health checks never wait for this client:

stdin: JSON {"target": "HOST:PORT", "kind": "empty_headers" | "long_tap_id",
"message_bytes": N, "seconds": S}. For S seconds it opens one stream after another, each
sending one message of about N bytes (a valid StreamTapsRequest: a buffered trace whose
request holds nothing but empty headers, or an identifier whose tap_id is N dashes) and
ending; a refused stream is opened again at once. stdout: JSON {"sent": n, "bytes": b,
"codes": {status name: count}}.

The messages are written on the wire by hand: no generated code is imported here.
"""

from __future__ import annotations

import json
import sys
import time

import grpc

METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def message(kind: str, size: int) -> bytes:
    if kind == "empty_headers":
        # StreamTapsRequest.trace (3) > TraceWrapper.http_buffered_trace (1) >
        # HttpBufferedTrace.request (1) > Message.headers (1), each header empty (2 bytes).
        return _field(3, _field(1, _field(1, b"\x0a\x00" * ((size - 16) // 2))))
    if kind == "long_tap_id":
        # StreamTapsRequest.identifier (1) > Identifier.tap_id (2)
        return _field(1, _field(2, b"-" * (size - 16)))
    raise ValueError(kind)


def main() -> None:
    spec = json.load(sys.stdin)
    payload = message(spec["kind"], spec["message_bytes"])
    codes: dict[str, int] = {}
    sent = 0
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ends = time.monotonic() + spec["seconds"]
    with grpc.insecure_channel(spec["target"], options=options) as channel:
        call = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
        while time.monotonic() < ends:
            try:
                call(iter([payload]), timeout=30)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            sent += 1
            codes[code] = codes.get(code, 0) + 1
    json.dump({"sent": sent, "bytes": sent * len(payload), "codes": codes}, sys.stdout)


if __name__ == "__main__":
    main()
