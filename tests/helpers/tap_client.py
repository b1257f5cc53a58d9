"""A StreamTaps client for the hardening tests: TLS, paced and held streams, generated load.

Like xds_client.py (whose encoder it reuses) it encodes with `xds-protos` and runs as a
subprocess (design.md, Two copies of Envoy's API); the test process only imports
`TapClientRun` from here, which imports neither xds-protos nor tap_emulator.

stdin: JSON {"target": "HOST:PORT", "timeout": seconds, "tls": TLS?, "streams": [STREAM]}.
TLS is {"ca": PEM path, "cert": PEM path?, "key": PEM path?, "server_name": name?}; without
it the channel is plaintext. A STREAM has
- "messages": [ITEM,...] as in xds_client.py (protobuf JSON, or {"raw_b64":...}), or
- "generate": {"authority": A, "trace_prefix": 16 hex digits, "count": N?, "until_file": P?,
  "body_bytes": B?, "tap_id": T?}: buffered traces with x-b3-traceid <trace_prefix><n as 16
  hex>, n from 0, until N are sent or file P exists (at most 100,000), from tap id T (default
  hardening-inbound);
and optionally "interval_seconds": S between messages, "hold_until_file": P (after the
last message, keep the stream open until P exists) and "no_traces": true (leave traces_b64
empty: long runs of generated load).
stdout: JSON {"streams": [{"code", "details", "sent", "traces_b64"}]}, one per stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
_GENERATED_MAX = 100_000


# The test side is tests/helpers/script_run.py (TapClientRun, tap_streams).


# --- the subprocess side ------------------------------------------------------------------


def _generated(spec: dict[str, Any]) -> Any:
    """Yields (message bytes, trace bytes) for a "generate" stream."""
    from envoy.service.tap.v3 import tap_pb2

    authority = spec["authority"]
    prefix = spec["trace_prefix"]
    count = min(spec.get("count", _GENERATED_MAX), _GENERATED_MAX)
    until = Path(spec["until_file"]) if spec.get("until_file") else None
    body = b"b" * spec.get("body_bytes", 0)
    for n in range(count):
        if until is not None and until.exists():
            return
        request = tap_pb2.StreamTapsRequest(trace_id=n + 1)
        if n == 0:
            request.identifier.tap_id = spec.get("tap_id", "hardening-inbound")
            request.identifier.node.id = "sidecar~10.0.0.9~good.ns~ns.svc.cluster.local"
        http = request.trace.http_buffered_trace
        for key, value in ((":authority", authority), ("x-b3-traceid", f"{prefix}{n:016x}")):
            http.request.headers.add(key=key, value=value)
        if body:
            http.request.body.as_bytes = body
        http.response.headers.add(key=":status", value="200")
        yield request.SerializeToString(), request.trace.SerializeToString()


def _listed(stream: dict[str, Any]) -> Any:
    from envoy.service.tap.v3 import tap_pb2
    from xds_client import encode  # the sibling script's encoder

    messages, _ = encode(stream)
    for raw in messages:
        try:
            trace = tap_pb2.StreamTapsRequest.FromString(raw).trace.SerializeToString()
        except Exception:
            trace = b""
        yield raw, trace


async def _send(channel: Any, stream: dict[str, Any], deadline_seconds: float) -> dict[str, Any]:
    import base64

    import grpc

    source = _generated(stream["generate"]) if "generate" in stream else _listed(stream)
    interval = stream.get("interval_seconds", 0.0)
    hold = Path(stream["hold_until_file"]) if stream.get("hold_until_file") else None
    sent = 0
    traces: list[str] = []

    async def requests() -> Any:
        nonlocal sent
        for raw, trace in source:
            if sent and interval:
                await asyncio.sleep(interval)
            yield raw
            sent += 1
            if not stream.get("no_traces"):
                traces.append(base64.b64encode(trace).decode())
        # The test creates the file from another process: there is no event to wait on.
        while hold is not None and not hold.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    call = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
    try:
        await call(requests(), timeout=deadline_seconds)
        code, details = "OK", ""
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    return {"code": code, "details": details, "sent": sent, "traces_b64": traces}


def _channel(spec: dict[str, Any]) -> Any:
    import grpc

    options: list[tuple[str, Any]] = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    tls = spec.get("tls")
    if tls is None:
        return grpc.aio.insecure_channel(spec["target"], options=options)
    if tls.get("server_name"):
        options.append(("grpc.ssl_target_name_override", tls["server_name"]))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls["ca"]).read_bytes(),
        private_key=Path(tls["key"]).read_bytes() if tls.get("key") else None,
        certificate_chain=Path(tls["cert"]).read_bytes() if tls.get("cert") else None,
    )
    return grpc.aio.secure_channel(spec["target"], credentials, options=options)


async def _main() -> None:
    spec = json.load(sys.stdin)
    started = time.monotonic()
    async with _channel(spec) as channel:
        results = await asyncio.gather(
            *(_send(channel, stream, spec.get("timeout", 60)) for stream in spec["streams"])
        )
    json.dump({"streams": results, "seconds": time.monotonic() - started}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(_main())
