"""One load-generator process: streams pre-serialized ``StreamTapsRequest`` messages.

The client library is grpcio's asyncio API for every server variant, so the comparison
between servers is fair. A process opens ``--connections`` HTTP/2 connections (one channel
each, with a local subchannel pool so they really are distinct) and spreads ``--streams``
``StreamTaps`` calls over them. Each stream writes as fast as flow control lets it, the
identifier-bearing message first, for ``--seconds`` counted from the moment every stream
has completed its first write. A write "completes" when grpcio has handed the message to
the transport, i.e. when flow control let it go.

The runner starts several of these processes, so clients never share the server's event
loop. Output is JSON lines on stdout: ``{"event": "streaming"}`` once every stream is open,
then ``{"event": "done", ...}`` with completed writes, bytes and final statuses.

    python benchmarks/experiments/transport/loadgen.py --port 50051 --streams 4 --seconds 10
    python benchmarks/experiments/transport/loadgen.py --port 50051 --oversize 17825792
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import cycle
from typing import TYPE_CHECKING

import grpc
import payloads

HOST = "127.0.0.1"
PATH = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.use_local_subchannel_pool", 1),  # one HTTP/2 connection per channel
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
#: How long a stream waits for its last write, then for the server's answer, when stopping.
FINISH_TIMEOUT_S = 1.0

if TYPE_CHECKING:
    from typing import TypeAlias

    StreamCall: TypeAlias = grpc.aio.StreamUnaryCall[bytes, bytes]


@dataclass(slots=True)
class Tally:
    """What this process's streams achieved."""

    writes: int = 0
    bytes: int = 0
    opened: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    details: Counter[str] = field(default_factory=Counter)

    def record_status(self, code: grpc.StatusCode | None, details: str | None) -> None:
        """Count one stream's final status (and its details, when not OK)."""
        name = code.name if code is not None else "NONE"
        self.statuses[name] += 1
        if name not in {"OK", "CANCELLED"} and details:
            self.details[details[:200]] += 1


def emit(event: str, **fields: object) -> None:
    """Write one JSON line to stdout for the runner."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def stream_messages(messages: payloads.PayloadSet) -> Iterator[bytes]:
    """Yield the identifier-bearing message, then the others over and over."""
    yield messages.first
    yield from cycle(messages.rest)


def new_call(channel: grpc.aio.Channel) -> StreamCall:
    """Start one raw-bytes ``StreamTaps`` call."""
    method: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
        PATH, request_serializer=None, response_deserializer=None
    )
    return method()


async def write_until_stopped(
    call: StreamCall,
    messages: Iterator[bytes],
    tally: Tally,
    stop: asyncio.Event,
    opened: asyncio.Event,
    streams: int,
) -> None:
    """Write until ``stop`` is set; count only the writes that completed."""
    first = True
    for message in messages:
        if stop.is_set():
            return
        await call.write(message)
        tally.writes += 1
        tally.bytes += len(message)
        if first:
            first = False
            tally.opened += 1
            if tally.opened == streams:
                opened.set()


async def run_stream(
    channel: grpc.aio.Channel,
    messages: payloads.PayloadSet,
    tally: Tally,
    stop: asyncio.Event,
    opened: asyncio.Event,
    streams: int,
) -> None:
    """Drive one stream: write until ``stop``, then end it gracefully or cancel it."""
    call = new_call(channel)
    writer = asyncio.create_task(
        write_until_stopped(call, stream_messages(messages), tally, stop, opened, streams)
    )
    await stop.wait()
    done, _ = await asyncio.wait({writer}, timeout=FINISH_TIMEOUT_S)
    if done and writer.exception() is None:
        # Flow control let the last write go: end the stream and take the answer.
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
            await asyncio.wait_for(call.done_writing(), FINISH_TIMEOUT_S)
            await asyncio.wait_for(call, FINISH_TIMEOUT_S)
    call.cancel()  # a no-op if the call already ended
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await writer
    tally.record_status(await call.code(), await call.details())


async def send_oversize(channel: grpc.aio.Channel, size: int, tally: Tally) -> None:
    """Send one identifier message, then one raw message of ``size`` bytes, and end."""
    call = new_call(channel)
    with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
        for message in (payloads.payload_set("small", variety=1).first, bytes(size)):
            await asyncio.wait_for(call.write(message), 3 * FINISH_TIMEOUT_S)
            tally.writes += 1
            tally.bytes += len(message)
        await asyncio.wait_for(call.done_writing(), 3 * FINISH_TIMEOUT_S)
        await asyncio.wait_for(call, 3 * FINISH_TIMEOUT_S)
    call.cancel()
    tally.record_status(await call.code(), await call.details())


async def generate(args: argparse.Namespace) -> Tally:
    """Open the connections and streams, run for ``--seconds``, and tally."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    opened = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tally = Tally()
    target = f"{HOST}:{args.port}"
    channels = [
        grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS) for _ in range(args.connections)
    ]
    try:
        if args.oversize:
            await send_oversize(channels[0], args.oversize, tally)
            return tally
        messages = payloads.payload_set(args.kind, variety=args.variety)
        streams = [
            asyncio.create_task(
                run_stream(channels[i % len(channels)], messages, tally, stop, opened, args.streams)
            )
            for i in range(args.streams)
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.wait(), args.open_timeout)
        started = time.monotonic()
        emit("streaming", opened=tally.opened, writes=tally.writes, bytes=tally.bytes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.seconds)
        stop.set()
        elapsed = time.monotonic() - started
        await asyncio.gather(*streams)
        emit("stopped", elapsed_s=elapsed)
        return tally
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def main() -> None:
    """Parse the command line, generate load, print the tally."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--connections", type=int, default=1, help="HTTP/2 connections")
    parser.add_argument("--streams", type=int, default=4, help="streams, over all connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to stream")
    parser.add_argument(
        "--kind", choices=sorted(payloads.BODY_SIZES), default="small", help="payload kind"
    )
    parser.add_argument(
        "--variety", type=int, default=payloads.DEFAULT_VARIETY, help="distinct messages"
    )
    parser.add_argument(
        "--open-timeout", type=float, default=10.0, help="max wait for all streams to open"
    )
    parser.add_argument(
        "--oversize", type=int, default=0, help="instead: send one message of this many bytes"
    )
    args = parser.parse_args()
    tally = asyncio.run(generate(args))
    emit(
        "done",
        writes=tally.writes,
        bytes=tally.bytes,
        opened=tally.opened,
        statuses=dict(tally.statuses),
        details=dict(tally.details),
    )


if __name__ == "__main__":
    main()
