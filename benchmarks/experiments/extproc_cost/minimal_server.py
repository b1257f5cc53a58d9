"""The floor of an ExternalProcessor in Python: grpc.aio on uvloop with the product's server
options, a raw-bytes Process handler that reads every message and does nothing else.

Modes (``--mode``):

- ``end``: decode each message (the product's generated ``ProcessingRequest``) and end the
  stream with OK at the response's last part (headers or body with end_of_stream, or
  trailers), as the product does;
- ``scan-end``: the same end, found from the message's first bytes without decoding;
- ``read``: read until Envoy ends the stream and never answer (Envoy's deferred close ends
  each side stream ``deferred_close_timeout`` after its transaction).

``--reader read`` reads with ``context.read()`` instead of the request iterator.
``--transport grpclib`` serves the same handler on grpclib (its own HTTP/2 stack in Python,
over h2; ``pip install grpclib``) instead of grpc.aio, with grpclib's defaults.
``--context-calls`` (with ``--reader read``) also asks ``peer()`` and
``invocation_metadata()`` of every stream, as the product does. Answers ``SIGUSR1`` with a
JSON line of counters on stdout (with grpc.aio, gRPC core's channelz call counts too: calls
core started, whether or not a handler was given them); stops on ``SIGTERM``.

    python benchmarks/experiments/extproc_cost/minimal_server.py --mode end
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from tap_emulator._proto.envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
)
from tap_emulator.app import grpc_server_options
from tap_emulator.config import Settings

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
#: First byte of a ProcessingRequest (fields are written in number order, the oneof first):
#: the tag of its part. 0x1A response_headers (3), 0x2A response_body (5), 0x3A
#: response_trailers (7).
RESPONSE_HEADERS, RESPONSE_BODY, RESPONSE_TRAILERS = 0x1A, 0x2A, 0x3A


class Counts:
    def __init__(self) -> None:
        self.streams = self.messages = self.bytes = self.ended_by_us = self.ended_by_peer = 0
        #: RPCs grpc.aio cancelled before or while their handler ran (its debug log line).
        self.cancelled_by_grpc = 0


class CancelledCounter(logging.Handler):
    """Counts grpc.aio's "RPC cancelled" debug lines: RPCs whose task grpc cancelled because
    the call was over in grpc core (the handler may never have started)."""

    def __init__(self, counts: Counts) -> None:
        super().__init__(logging.DEBUG)
        self._counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("RPC cancelled"):
            self._counts.cancelled_by_grpc += 1


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def scan_is_last(raw: bytes) -> bool:
    """The response's last part, read off the wire: response trailers, or response headers
    or body whose end_of_stream (field 3 of HttpHeaders, 2 of HttpBody) is set."""
    if not raw:
        return False
    tag = raw[0]
    if tag == RESPONSE_TRAILERS:
        return True
    if tag not in (RESPONSE_HEADERS, RESPONSE_BODY):
        return False
    length, at = _varint(raw, 1)
    end = at + length
    eos_tag = 0x18 if tag == RESPONSE_HEADERS else 0x10
    while at < end:
        key, at = _varint(raw, at)
        wire = key & 7
        if key == eos_tag:
            return raw[at] == 1
        if wire == 0:
            _, at = _varint(raw, at)
        elif wire == 2:
            size, at = _varint(raw, at)
            at += size
        elif wire == 5:
            at += 4
        elif wire == 1:
            at += 8
        else:
            return False
    return False


def decode_is_last(raw: bytes) -> bool:
    request = ProcessingRequest.FromString(raw)
    part = request.WhichOneof("request")
    if part == "response_trailers":
        return True
    if part == "response_headers":
        return request.response_headers.end_of_stream
    if part == "response_body":
        return request.response_body.end_of_stream
    return False


def make_handler(
    mode: str, reader: str, counts: Counts, busy_us: float = 0.0, context_calls: bool = False
) -> Any:
    is_last = {"end": decode_is_last, "scan-end": scan_is_last, "read": None}[mode]
    if busy_us:  # stand in for a slower server: spin this long on every message
        plain, spin_s = is_last, busy_us / 1e6

        def is_last(raw: bytes) -> bool:
            until = time.perf_counter() + spin_s
            while time.perf_counter() < until:
                pass
            return bool(plain and plain(raw))

    async def with_iterator(requests: AsyncIterator[bytes], context: Any) -> None:
        counts.streams += 1
        try:
            async for raw in requests:
                counts.messages += 1
                counts.bytes += len(raw)
                if is_last is not None and is_last(raw):
                    counts.ended_by_us += 1
                    return
            counts.ended_by_peer += 1
        except asyncio.CancelledError:
            counts.ended_by_peer += 1
            raise

    async def with_read(requests: AsyncIterator[bytes], context: Any) -> None:
        counts.streams += 1
        if context_calls:  # what the product asks of every stream
            context.peer()
            context.invocation_metadata()
        read = context.read
        eof = grpc.aio.EOF
        try:
            while True:
                raw = await read()
                if raw is eof:
                    counts.ended_by_peer += 1
                    return
                counts.messages += 1
                counts.bytes += len(raw)
                if is_last is not None and is_last(raw):
                    counts.ended_by_us += 1
                    return
        except asyncio.CancelledError:
            counts.ended_by_peer += 1
            raise

    return with_read if reader == "read" else with_iterator


async def serve_grpclib(mode: str, counts: Counts) -> Any:
    """The same handler on grpclib (its default settings): returns (server, port)."""
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server

    class RawCodec(CodecBase):  # type: ignore[misc]
        __content_subtype__ = "proto"

        def encode(self, message: object, message_type: object) -> bytes:
            assert isinstance(message, bytes)
            return message

        def decode(self, data: bytes, message_type: object) -> bytes:
            return data

    is_last = {"end": decode_is_last, "scan-end": scan_is_last, "read": None}[mode]

    async def process(stream: Any) -> None:
        counts.streams += 1
        try:
            async for raw in stream:
                counts.messages += 1
                counts.bytes += len(raw)
                if is_last is not None and is_last(raw):
                    counts.ended_by_us += 1
                    await stream.send_trailing_metadata()
                    return
            counts.ended_by_peer += 1
            await stream.send_trailing_metadata()
        except asyncio.CancelledError:
            counts.ended_by_peer += 1
            raise

    class Processor:
        def __mapping__(self) -> dict[str, Any]:
            return {
                f"/{SERVICE}/Process": Handler(process, Cardinality.STREAM_STREAM, bytes, bytes)
            }

    server = Server([Processor()], codec=RawCodec())
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]
    return server, port


async def serve(
    mode: str,
    reader: str,
    max_streams_per_connection: int,
    transport: str,
    extra_options: list[tuple[str, int]],
    busy_us: float = 0.0,
    context_calls: bool = False,
) -> None:
    counts = Counts()
    cygrpc_log = logging.getLogger("grpc._cython.cygrpc")
    cygrpc_log.setLevel(logging.DEBUG)
    cygrpc_log.addHandler(CancelledCounter(counts))
    cygrpc_log.propagate = False
    if transport == "grpclib":
        server, port = await serve_grpclib(mode, counts)
    else:
        settings = Settings(max_streams_per_connection=max_streams_per_connection)
        options = grpc_server_options(settings) + extra_options
        server = grpc.aio.server(options=options)
        handler = grpc.stream_stream_rpc_method_handler(
            make_handler(mode, reader, counts, busy_us, context_calls)
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Process": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def snapshot() -> None:
        emit(
            "counts",
            streams=counts.streams,
            messages=counts.messages,
            bytes=counts.bytes,
            ended_by_us=counts.ended_by_us,
            ended_by_peer=counts.ended_by_peer,
            cancelled_by_grpc=counts.cancelled_by_grpc,
            **(channelz_calls() if transport != "grpclib" else {}),
            cpu_s=time.process_time(),
        )

    loop.add_signal_handler(signal.SIGUSR1, snapshot)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    emit("listening", port=port)
    await stop.wait()
    if transport == "grpclib":
        server.close()
        await server.wait_closed()
    else:
        await server.stop(0.5)


def channelz_calls() -> dict[str, int]:
    """gRPC core's own call counts for this process's servers (channelz, on by default). A
    call core accepted and then ended before any handler was given it counts as started (and
    failed), so started minus handled is what the application never saw."""
    from grpc._cython import cygrpc

    totals = {"calls_started": 0, "calls_succeeded": 0, "calls_failed": 0}
    for server in json.loads(cygrpc.channelz_get_servers(0)).get("server", []):
        data = server.get("data", {})
        totals["calls_started"] += int(data.get("callsStarted", 0))
        totals["calls_succeeded"] += int(data.get("callsSucceeded", 0))
        totals["calls_failed"] += int(data.get("callsFailed", 0))
    return totals


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("end", "scan-end", "read"), default="end")
    parser.add_argument("--reader", choices=("iterator", "read"), default="iterator")
    parser.add_argument("--max-streams-per-connection", type=int, default=1000)
    parser.add_argument("--transport", choices=("grpc.aio", "grpclib"), default="grpc.aio")
    parser.add_argument(
        "--grpc-arg", action="append", default=[], help="KEY=INT, another server option"
    )
    parser.add_argument("--busy-us", type=float, default=0.0, help="CPU spent per message")
    parser.add_argument(
        "--context-calls",
        action="store_true",
        help="with --reader read: also call peer() and invocation_metadata() per stream",
    )
    parser.add_argument(
        "--stderr-to", default="", help="write stderr (e.g. GRPC_TRACE's lines) to this file"
    )
    args = parser.parse_args()
    if args.stderr_to:
        os.dup2(os.open(args.stderr_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    extra = [(k, int(v)) for k, v in (a.split("=", 1) for a in args.grpc_arg)]
    uvloop.run(
        serve(
            args.mode,
            args.reader,
            args.max_streams_per_connection,
            args.transport,
            extra,
            args.busy_us,
            args.context_calls,
        )
    )


if __name__ == "__main__":
    main()
