"""Receive-only ``StreamTaps`` server on grpcio's asyncio API (``grpc.aio``).

A generic handler takes the raw message bytes (no deserializer), counts them and drops
them. ``--bdp-probe off`` (the default) sets ``grpc.http2.bdp_probe=0``, which bounds what
the transport takes in while a handler does not read (backpressure relies on it); ``--bdp-probe on``
keeps gRPC's default, for the memory comparison. The receive limit is 16 MiB either way.
``--option NAME=INTEGER`` adds a channel argument, e.g. a fixed stream window with
``grpc.http2.lookahead_bytes=262144``.

    python benchmarks/experiments/transport/server_grpc_aio.py --port 50051 [--loop uvloop]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable

import grpc
import serverkit
from serverkit import Counters


def server_options(*, bdp_probe: bool, extra: list[str]) -> list[tuple[str, int]]:
    """Build the channel arguments: receive limit, BDP probing off unless asked, ``extra``.

    ``extra`` holds ``NAME=INTEGER`` strings from ``--option``.
    """
    options = [("grpc.max_receive_message_length", serverkit.MAX_MESSAGE_BYTES)]
    if not bdp_probe:
        options.append(("grpc.http2.bdp_probe", 0))
    for item in extra:
        name, _, value = item.partition("=")
        options.append((name, int(value)))
    return options


def make_handler(
    counters: Counters, parse: Callable[[bytes], object] | None, *, stall: bool
) -> grpc.GenericRpcHandler:
    """Build a generic handler for ``StreamTaps`` that counts raw bytes and answers empty."""

    async def stream_taps(
        requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        counters.streams_opened += 1
        try:
            async for message in requests:
                counters.messages += 1
                counters.bytes += len(message)
                if parse is not None:
                    parse(message)
                if stall:
                    await serverkit.stall_forever()
        finally:
            counters.streams_closed += 1
        return b""  # an empty StreamTapsResponse

    method: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_unary_rpc_method_handler(
        stream_taps, request_deserializer=None, response_serializer=None
    )
    return grpc.method_handlers_generic_handler(serverkit.SERVICE, {serverkit.METHOD: method})


async def serve(args: argparse.Namespace) -> None:
    """Serve until stopped, then print the final counters."""
    counters = Counters()
    server = grpc.aio.server(
        options=server_options(bdp_probe=args.bdp_probe == "on", extra=args.option)
    )
    server.add_generic_rpc_handlers(
        [make_handler(counters, serverkit.message_parser(args.parse), stall=args.stall)]
    )
    port = server.add_insecure_port(f"{serverkit.HOST}:{args.port}")
    await server.start()
    serverkit.announce_listening(port, transport="grpc.aio", args=args)
    try:
        await serverkit.serve_until_stopped(counters, args.lifetime)
    finally:
        await server.stop(grace=None)
        serverkit.emit("exit", **serverkit.snapshot(counters))


def main() -> None:
    """Parse the command line and serve."""
    parser = serverkit.argument_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--bdp-probe",
        choices=("off", "on"),
        default="off",
        help="'on' keeps gRPC's default HTTP/2 BDP probing (unbounded under stall)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=INTEGER",
        help="an extra integer channel argument, e.g. grpc.http2.lookahead_bytes=1048576",
    )
    args = parser.parse_args()
    serverkit.run(lambda: serve(args), args.loop)


if __name__ == "__main__":
    main()
