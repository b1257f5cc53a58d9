"""Builders of StreamTapsRequest messages as protobuf JSON (dicts), for the xds client.

Tests describe what a proxy sends as plain dicts; the client subprocess encodes them with
xds-protos. Field names are the proto names (protobuf JSON accepts them); bytes are base64.
"""

from __future__ import annotations

import base64
from typing import Any

Json = dict[str, Any]

B3 = "a7020847b1ec89328e3f8d357f373266"
SEED_AUTHORITY = "httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080"
SEED_NAMESPACE = "sleep-2-59564"


def headers(pairs: list[tuple[str, str]]) -> list[Json]:
    return [{"key": key, "value": value} for key, value in pairs]


def body(data: bytes, truncated: bool = False) -> Json:
    shown: Json = {"as_bytes": base64.b64encode(data).decode()}
    if truncated:
        shown["truncated"] = True
    return shown


def identifier(direction: str, namespace: str = SEED_NAMESPACE, pod: str = "sleep-7d4f") -> Json:
    return {
        "node": {
            "id": f"sidecar~10.0.0.7~{pod}.{namespace}~{namespace}.svc.cluster.local",
            "cluster": f"sleep.{namespace}",
            "metadata": {"NAMESPACE": namespace, "WORKLOAD_NAME": "sleep"},
        },
        "tap_id": f"f5-tap-test-{direction}",
    }


def request_headers(
    authority: str = SEED_AUTHORITY,
    trace: str | None = B3,
    method: str = "GET",
    path: str = "/get",
    extra: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    pairs = [(":authority", authority), (":path", path), (":method", method), (":scheme", "http")]
    if trace is not None:
        pairs.append(("x-b3-traceid", trace))
    pairs.append(("x-request-id", "c4c2cbc8-a87d-4b08-909c-c115bea4d25f"))
    return pairs + (extra or [])


def buffered(
    request: list[tuple[str, str]],
    response: list[tuple[str, str]] | None = None,
    request_body: bytes = b"",
    response_body: bytes = b"",
    response_trailers: list[tuple[str, str]] | None = None,
) -> Json:
    trace: Json = {
        "request": {"headers": headers(request)},
        "response": {"headers": headers(response or [(":status", "200")])},
    }
    if request_body:
        trace["request"]["body"] = body(request_body)
    if response_body:
        trace["response"]["body"] = body(response_body)
    if response_trailers:
        trace["response"]["trailers"] = headers(response_trailers)
    return {"http_buffered_trace": trace}


def segment(trace_id: int, piece: str | None = None, value: Any = None) -> Json:
    content: Json = {"trace_id": str(trace_id)}
    if piece is not None:
        content[piece] = value
    return {"http_streamed_trace_segment": content}


def message(trace: Json | None, trace_id: int = 0, ident: Json | None = None) -> Json:
    shown: Json = {}
    if ident is not None:
        shown["identifier"] = ident
    if trace_id:
        shown["trace_id"] = str(trace_id)
    if trace is not None:
        shown["trace"] = trace
    return shown


def stream(traces: list[Json], ident: Json | None, first_trace_id: int = 1000) -> Json:
    """One StreamTaps call: the identifier only on the first message, as Envoy sends it."""
    return {
        "messages": [
            message(trace, first_trace_id + index, ident if index == 0 else None)
            for index, trace in enumerate(traces)
        ]
    }
