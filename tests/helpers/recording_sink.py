"""A TapSinkService that records what it receives, decoded by `xds-protos` (Envoy's official
generated code): the independent reader of what a forwarding emulator sends. Run as a
subprocess (our generated code and xds-protos cannot share a process: design.md, Two copies of
Envoy's API); it never imports tap_emulator.

    python recording_sink.py RECORD.jsonl [--listen 127.0.0.1:0]

Prints `listening PORT` once serving. Each message received is one JSON line in RECORD.jsonl
(flushed at once): {"stream": n, "index": i (1-based on its stream), "identifier": the
identifier as protobuf JSON or null, "trace_id": str, "trace_sha256": hex of the trace field's
bytes exactly as they came (not re-serialized), "trace_bytes": their length}. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from envoy.service.tap.v3 import tap_pb2
from google.protobuf import json_format

_streams = itertools.count(1)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def raw_field(data: bytes, wanted: int) -> bytes | None:
    """The bytes of top-level length-delimited field `wanted`, as they are on the wire."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 2:
            size, position = _varint(data, position)
            if number == wanted:
                return data[position : position + size]
            position += size
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        else:
            raise ValueError(f"wire type {wire_type} not expected in a StreamTapsRequest")
    return None


def record_of(stream: int, index: int, raw: bytes) -> dict[str, Any]:
    request = tap_pb2.StreamTapsRequest.FromString(raw)
    trace = raw_field(raw, 3) or b""
    identifier = None
    if request.HasField("identifier"):
        identifier = json_format.MessageToDict(request.identifier, preserving_proto_field_name=True)
    return {
        "stream": stream,
        "index": index,
        "identifier": identifier,
        "trace_id": str(request.trace_id),
        "trace_sha256": hashlib.sha256(trace).hexdigest(),
        "trace_bytes": len(trace),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("record")
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    out = Path(args.record).open("a", buffering=1)  # noqa: SIM115, ASYNC230 - for its life

    async def stream_taps(requests: Any, context: Any) -> bytes:
        stream = next(_streams)
        index = 0
        async for raw in requests:
            index += 1
            out.write(json.dumps(record_of(stream, index, raw)) + "\n")
        return b""

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    handler = grpc.stream_unary_rpc_method_handler(stream_taps)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "envoy.service.tap.v3.TapSinkService", {"StreamTaps": handler}
            )
        ]
    )
    port = server.add_insecure_port(args.listen)
    await server.start()
    print(f"listening {port}", flush=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await server.stop(1)
    out.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
