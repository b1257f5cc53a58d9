"""Receive-only ``StreamTaps`` server on grpclib (its own asyncio HTTP/2 stack over h2).

A pass-through codec hands the handler the raw message bytes; the handler counts them and
drops them. grpclib's flow-control windows are left at their defaults (4 MiB per stream and
per connection); grpclib has no maximum message size (vmagamedov/grpclib#195).

    python benchmarks/experiments/transport/server_grpclib.py --port 50051 [--loop uvloop] [--parse]
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable, Mapping

import serverkit
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server, Stream
from serverkit import Counters


class RawCodec(CodecBase):
    """Passes message bytes through untouched; speaks ``application/grpc(+proto)``."""

    __content_subtype__ = "proto"

    def encode(self, message: object, message_type: object) -> bytes:
        """Messages are already bytes."""
        if not isinstance(message, bytes):
            raise TypeError(f"expected bytes, got {type(message).__name__}")
        return message

    def decode(self, data: bytes, message_type: object) -> bytes:
        """Hand the bytes to the handler as they came."""
        return data


class TapSink:
    """The ``TapSinkService`` with one counting ``StreamTaps`` handler."""

    def __init__(
        self, counters: Counters, parse: Callable[[bytes], object] | None, *, stall: bool
    ) -> None:
        """Count into ``counters``; parse and stall as asked."""
        self._counters = counters
        self._parse = parse
        self._stall = stall

    async def stream_taps(self, stream: Stream[bytes, bytes]) -> None:
        """Count every message until the client ends the stream, then answer empty."""
        counters = self._counters
        counters.streams_opened += 1
        try:
            async for message in stream:
                counters.messages += 1
                counters.bytes += len(message)
                if self._parse is not None:
                    self._parse(message)
                if self._stall:
                    await serverkit.stall_forever()
            await stream.send_message(b"")
        finally:
            counters.streams_closed += 1

    def __mapping__(self) -> Mapping[str, Handler]:
        """Map the method's path to its handler (grpclib's routing table)."""
        return {serverkit.PATH: Handler(self.stream_taps, Cardinality.STREAM_UNARY, bytes, bytes)}


def bind(port: int) -> socket.socket:
    """Bind a TCP socket on loopback, so that port 0 can be read back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((serverkit.HOST, port))
    return sock


async def serve(args: argparse.Namespace) -> None:
    """Serve until stopped, then print the final counters."""
    counters = Counters()
    sink = TapSink(counters, serverkit.message_parser(args.parse), stall=args.stall)
    server = Server([sink], codec=RawCodec())
    sock = bind(args.port)
    await server.start(sock=sock)
    serverkit.announce_listening(sock.getsockname()[1], transport="grpclib", args=args)
    try:
        await serverkit.serve_until_stopped(counters, args.lifetime)
    finally:
        server.close()
        await server.wait_closed()
        serverkit.emit("exit", **serverkit.snapshot(counters))


def main() -> None:
    """Parse the command line and serve."""
    args = serverkit.argument_parser(__doc__.splitlines()[0]).parse_args()
    serverkit.run(lambda: serve(args), args.loop)


if __name__ == "__main__":
    main()
