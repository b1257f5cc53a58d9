"""The product's own CPU per ext_proc transaction, without gRPC: the real `ExtProcessor`
built by `app.build` (writers into a tmpfs directory, on uvloop), fed Process streams from
a stand-in servicer context that reads from memory.

Each transaction is what Envoy sends for the benchmark's GET in the chart's buffered mode:
request headers (11 headers, the three `xds.node` attributes), response headers (5), one
256-byte response body with end_of_stream. Reports CPU (``time.process_time``, all threads,
writers included) per transaction, best of ``--repeat``.

    python benchmarks/experiments/extproc_cost/hotpath.py --transactions 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvloop
from google.protobuf.struct_pb2 import Struct

from tap_emulator._proto.envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
)
from tap_emulator.app import build
from tap_emulator.config import Settings

METADATA = (
    ("x-tap-id", "bench-inbound"),
    ("x-tap-streaming", "false"),
    ("x-tap-max-buffered-rx-bytes", "1048576"),
    ("x-tap-max-buffered-tx-bytes", "1048576"),
    ("x-tap-record-headers-received-time", "false"),
    ("x-tap-record-downstream-connection", "false"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "05e3ac9a4f6e3b90"),
    ("x-b3-parentspanid", "e457b5a2e4d86bd1"),
    ("x-b3-sampled", "0"),
)


def messages() -> list[bytes]:
    request = ProcessingRequest(observability_mode=True)
    headers = request.request_headers.headers.headers
    for key, value in (
        (":authority", "127.0.0.1:40000"),
        (":path", "/get"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "h2load nghttp2/1.52.0"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "3f1c1f4e-8c59-4a8b-9a55-6f1c5b1ed6a1"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ):
        headers.add(key=key, raw_value=value.encode())
    request.request_headers.end_of_stream = True
    attributes = Struct()
    attributes.update(
        {
            "xds.node.id": "sidecar~127.0.0.1~bench-client-0.bench~bench.svc.cluster.local",
            "xds.node.cluster": "bench-client.bench",
            "xds.node.metadata.NAMESPACE": "bench",
        }
    )
    request.attributes["envoy.filters.http.ext_proc"].CopyFrom(attributes)
    response = ProcessingRequest(observability_mode=True)
    for key, value in (
        (":status", "200"),
        ("content-length", "256"),
        ("content-type", "text/plain"),
        ("date", "Tue, 01 Dec 2026 23:00:00 GMT"),
        ("server", "envoy"),
    ):
        response.response_headers.headers.headers.add(key=key, raw_value=value.encode())
    body = ProcessingRequest(observability_mode=True)
    body.response_body.body = b"x" * 256
    body.response_body.end_of_stream = True
    return [m.SerializeToString() for m in (request, response, body)]


class Context:
    """What `ExtProcessor.process` asks of grpc.aio's servicer context."""

    def __init__(self, number: int, raws: list[bytes]) -> None:
        self._peer = f"ipv4:127.0.0.1:{40000 + number % 8}"
        self._raws = iter(raws)

    async def read(self) -> object:
        """The next message, or grpc.aio.EOF at the end (what the product reads with)."""
        return next(self._raws, grpc.aio.EOF)

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return METADATA

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"aborted: {code} {details}")


async def no_requests() -> AsyncIterator[bytes]:
    """The request iterator the product never reads (it reads through the context)."""
    return
    yield b""


async def run(transactions: int, directory: Path, yield_every: int, ui: bool) -> float:
    settings = Settings(output_dir=directory, ui_listen="127.0.0.1:0" if ui else "")
    emulator = build(settings)
    if emulator.page is not None:
        await emulator.page.start("127.0.0.1", 0)
    await asyncio.to_thread(emulator.publisher.open)
    await emulator.pool.start()
    raws = messages()
    process = emulator.processor.process
    start = time.process_time()
    for number in range(transactions):
        await process(no_requests(), Context(number, raws))  # type: ignore[arg-type]
        if number % yield_every == yield_every - 1:
            await asyncio.sleep(0)  # let the writers run, as the server's loop would
    await emulator.pool.drain(60.0)
    spent = time.process_time() - start
    written = emulator.pool.published
    await emulator.pool.close()
    if emulator.page is not None:
        await emulator.page.close()
    if written != transactions:
        raise SystemExit(f"wrote {written} files for {transactions} transactions")
    return spent / transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--yield-every",
        type=int,
        default=256,
        help="transactions between two turns of the loop (1: the writers wake for each file, "
        "as on a server with few transactions in flight)",
    )
    parser.add_argument("--ui", action="store_true", help="with the web page's process on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
            results.append(
                uvloop.run(run(args.transactions, Path(directory), args.yield_every, args.ui))
            )
    best = min(results)
    if args.json:
        print(json.dumps({"us_per_transaction": [round(r * 1e6, 1) for r in results]}))
    print(
        f"best {best * 1e6:.1f} µs CPU per transaction (all: "
        + ", ".join(f"{r * 1e6:.1f}" for r in results)
        + ")",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
