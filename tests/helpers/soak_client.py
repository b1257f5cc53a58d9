"""A soak sender: steady load in short StreamTaps calls, resending any call not answered OK.

Runs as a subprocess and encodes with `xds-protos` (design.md, Two copies of Envoy's API).
It sends calls of `batch` messages at `rate` messages per second until `seconds` have
passed, then finishes the call it is in. A call that ends with any status but OK (the server
restarting, say) is sent again, whole, on the same channel (which reconnects by itself) until
it is answered OK, so every message it generated has been acknowledged once the client exits
0: at least once, with the duplicates a resend makes.

Message n of call b of client c is a buffered trace with `:authority: soak<c>.ns:80` and
`x-b3-traceid: <c as 8 hex><b as 8 hex><n as 16 hex>`, so its file name says which it is.

stdin: JSON {"target", "client", "seconds", "rate", "batch", "give_up_after"}.
stdout: JSON {"calls", "attempts", "messages_sent", "failures": {code: count},
"digests": {trace id: sha256 hex of the serialized trace}}.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections import Counter
from typing import Any

import grpc
from envoy.service.tap.v3 import tap_pb2

METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def build_call(client: int, call: int, batch: int) -> list[tuple[str, bytes, bytes]]:
    """(trace id, message bytes, trace bytes) for each message of one call."""
    built = []
    for n in range(batch):
        trace_id = f"{client:08x}{call:08x}{n:016x}"
        request = tap_pb2.StreamTapsRequest(trace_id=call * batch + n + 1)
        if n == 0:
            request.identifier.tap_id = f"soak-{client}-inbound"
            request.identifier.node.id = f"sidecar~10.0.1.{client}~soak.ns~ns.svc.cluster.local"
        http = request.trace.http_buffered_trace
        http.request.headers.add(key=":authority", value=f"soak{client}.ns:80")
        http.request.headers.add(key="x-b3-traceid", value=trace_id)
        http.request.headers.add(key=":path", value=f"/soak/{call}/{n}")
        http.response.headers.add(key=":status", value="200")
        http.response.body.as_bytes = (trace_id * 16).encode()
        built.append((trace_id, request.SerializeToString(), request.trace.SerializeToString()))
    return built


async def send_once(
    channel: grpc.aio.Channel, messages: list[bytes], interval: float
) -> tuple[str, int]:
    sent = 0

    async def requests() -> Any:
        nonlocal sent
        for raw in messages:
            yield raw
            sent += 1
            await asyncio.sleep(interval)

    call = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
    try:
        await call(requests(), timeout=60, wait_for_ready=True)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, sent
    return "OK", sent


async def main() -> None:
    spec = json.load(sys.stdin)
    client, batch = spec["client"], spec["batch"]
    interval = 1.0 / spec["rate"]
    started = time.monotonic()
    end = started + spec["seconds"]
    give_up = end + spec.get("give_up_after", 90)
    failures: Counter[str] = Counter()
    digests: dict[str, str] = {}
    calls = attempts = messages_sent = 0
    async with grpc.aio.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        while time.monotonic() < end:
            built = build_call(client, calls, batch)
            raws = [raw for _, raw, _ in built]
            while True:
                attempts += 1
                code, sent = await send_once(channel, raws, interval)
                messages_sent += sent
                if code == "OK":
                    break
                failures[code] += 1
                if time.monotonic() > give_up:
                    raise SystemExit(f"call {calls} never answered OK: last {code}")
                await asyncio.sleep(0.1)
            digests.update({tid: hashlib.sha256(trace).hexdigest() for tid, _, trace in built})
            calls += 1
    json.dump(
        {
            "calls": calls,
            "attempts": attempts,
            "messages_sent": messages_sent,
            "failures": dict(failures),
            "digests": digests,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    asyncio.run(main())
