"""An ExternalProcessor that reads every message of every Process stream and never answers
or ends a stream itself: each one lasts until Envoy ends it (its deferred close). It stands
for what Envoy's side would hold without the emulator's early close, for measurements that
compare the two.

Run as a process: serves on 127.0.0.1 port 0 (plaintext HTTP/2), prints `{"port": PORT}`
and serves until SIGTERM or SIGINT. Messages are read as raw bytes: nothing is decoded.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


async def _process(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        pass
    # Envoy half-closed the stream: wait for its reset, never answer.
    await asyncio.Event().wait()
    yield b""  # pragma: no cover - never reached; makes this an async generator


async def serve() -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1 << 20)])
    handler = grpc.stream_stream_rpc_method_handler(_process)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Process": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve())
