"""A StreamTaps client whose messages are encoded by `xds-protos`, Envoy's official
generated code: an encoder independent of ours. Run as a subprocess (our generated code and
xds-protos cannot share a process: design.md, Two copies of Envoy's API); it never imports
tap_emulator.

stdin: JSON {"target": "HOST:PORT", "timeout": seconds, "streams": [STREAM,...]} where
STREAM is {"messages": [ITEM,...]}; an ITEM is a StreamTapsRequest as protobuf JSON, or
{"raw_b64": base64 bytes} sent as they are (to test malformed input); a STREAM may add
"pause_after": N and "pause_seconds": S (pause once after N messages).
All streams run concurrently. stdout: JSON {"streams": [{"code", "details", "sent",
"traces_b64"}]} where traces_b64 holds each sent message's `trace`, serialized by xds-protos.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import grpc
from envoy.service.tap.v3 import tap_pb2
from google.protobuf import json_format

METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"


def encode(stream: dict[str, Any]) -> tuple[list[bytes], list[str]]:
    messages, traces = [], []
    for item in stream["messages"]:
        if "raw_b64" in item:
            messages.append(base64.b64decode(item["raw_b64"]))
            continue
        request = json_format.ParseDict(item, tap_pb2.StreamTapsRequest())
        messages.append(request.SerializeToString())
        traces.append(base64.b64encode(request.trace.SerializeToString()).decode())
    return messages, traces


async def send(
    channel: grpc.aio.Channel, stream: dict[str, Any], deadline_seconds: float
) -> dict[str, Any]:
    messages, traces = encode(stream)
    call = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
    sent = 0
    pause_after = stream.get("pause_after")

    async def requests():  # type: ignore[no-untyped-def]
        nonlocal sent
        for message in messages:
            yield message
            sent += 1
            if pause_after is not None and sent == pause_after:
                await asyncio.sleep(stream.get("pause_seconds", 1.0))

    try:
        await call(requests(), timeout=deadline_seconds)
        code, details = "OK", ""
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    return {"code": code, "details": details, "sent": sent, "traces_b64": traces}


async def main() -> None:
    spec = json.load(sys.stdin)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(spec["target"], options=options) as channel:
        results = await asyncio.gather(
            *(send(channel, stream, spec.get("timeout", 60)) for stream in spec["streams"])
        )
    json.dump({"streams": results}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
