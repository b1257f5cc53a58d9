"""Realistic, pre-serialized ``StreamTapsRequest`` messages for the transport benchmark.

Each message holds an ``envoy.data.tap.v3.HttpBufferedTrace`` the way Envoy's tap filter
sends one: 12 request headers (pseudo-headers, a B3 trace id, a request id, a user
agent...), 6 response headers and a body. The first message of a stream also carries the
``identifier`` (Istio-style node id, ``NAMESPACE`` metadata, tap id ``inbound``), as Envoy
sends it once per stream.

Messages are serialized once, up front, so the load generator spends its time on the
transport and not on protobuf. This module imports ``xds-protos``; it must only ever run in
benchmark processes, never next to the product's own generated code (both register the
same proto names).

Run it to print the sizes: ``python benchmarks/experiments/transport/payloads.py``.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

# xds-protos ships no type stubs.
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.data.tap.v3 import common_pb2, http_pb2, wrapper_pb2  # type: ignore[import-untyped]
from envoy.service.tap.v3 import tap_pb2  # type: ignore[import-untyped]
from google.protobuf import struct_pb2, timestamp_pb2

NODE_ID = "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local"
NAMESPACE = "ns"
TAP_ID = "inbound"

#: Body sizes of the named payload kinds, in bytes.
BODY_SIZES: dict[str, int] = {
    "small": 1024,  # ~1.6 KB messages: the common case
    "large": 64 * 1024,  # 64 KiB body
    "mib": 1024 * 1024,  # 1 MiB body: the stalled-handler memory test
}

#: Distinct messages built per payload set; the load generator cycles through them.
DEFAULT_VARIETY = 32


@dataclass(frozen=True, slots=True)
class PayloadSet:
    """Serialized messages for one stream: ``first`` carries the identifier."""

    kind: str
    first: bytes
    rest: tuple[bytes, ...]

    @property
    def mean_size(self) -> float:
        """Mean serialized size of the messages after the first, in bytes."""
        return sum(len(m) for m in self.rest) / len(self.rest)


def _header(key: str, value: str) -> base_pb2.HeaderValue:
    return base_pb2.HeaderValue(key=key, value=value)


def _identifier() -> tap_pb2.StreamTapsRequest.Identifier:
    metadata = struct_pb2.Struct()
    metadata.update({"NAMESPACE": NAMESPACE})
    identifier = tap_pb2.StreamTapsRequest.Identifier(tap_id=TAP_ID)
    identifier.node.id = NODE_ID
    identifier.node.cluster = f"pod.{NAMESPACE}"
    identifier.node.metadata.CopyFrom(metadata)
    return identifier


def build_trace(body_size: int, rng: random.Random) -> wrapper_pb2.TraceWrapper:
    """Build one buffered HTTP trace with a response body of ``body_size`` bytes."""
    trace_id = f"{rng.getrandbits(128):032x}"
    request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    request_headers = [
        _header(":authority", "reviews.bookinfo:9080"),
        _header(":path", f"/reviews/{rng.randrange(10_000)}?lang=en&format=full"),
        _header(":method", "GET"),
        _header(":scheme", "http"),
        _header("user-agent", "python-requests/2.32.3"),
        _header("accept", "application/json"),
        _header("accept-encoding", "gzip, deflate"),
        _header("x-forwarded-proto", "http"),
        _header("x-request-id", request_id),
        _header("x-b3-traceid", trace_id),
        _header("x-b3-spanid", trace_id[:16]),
        _header("x-b3-sampled", "1"),
    ]
    response_headers = [
        _header(":status", "200"),
        _header("content-type", "application/json"),
        _header("content-length", str(body_size)),
        _header("date", "Thu, 27 Nov 2026 05:14:00 GMT"),
        _header("x-envoy-upstream-service-time", str(rng.randrange(1, 200))),
        _header("server", "envoy"),
    ]
    received = timestamp_pb2.Timestamp(seconds=1_795_756_440, nanos=rng.randrange(10**9))
    trace = http_pb2.HttpBufferedTrace(
        request=http_pb2.HttpBufferedTrace.Message(headers=request_headers),
        response=http_pb2.HttpBufferedTrace.Message(
            headers=response_headers,
            body=common_pb2.Body(as_bytes=rng.randbytes(body_size)),
            headers_received_time=received,
        ),
    )
    return wrapper_pb2.TraceWrapper(http_buffered_trace=trace)


def build_request(
    body_size: int, rng: random.Random, *, sequence: int, with_identifier: bool
) -> bytes:
    """Serialize one ``StreamTapsRequest``; the first of a stream has the identifier."""
    request = tap_pb2.StreamTapsRequest(trace_id=sequence, trace=build_trace(body_size, rng))
    if with_identifier:
        request.identifier.CopyFrom(_identifier())
    serialized: bytes = request.SerializeToString()
    return serialized


def payload_set(kind: str, *, variety: int = DEFAULT_VARIETY, seed: int = 1) -> PayloadSet:
    """Build the messages of one named kind (see ``BODY_SIZES``), deterministically."""
    body_size = BODY_SIZES[kind]
    rng = random.Random(seed)
    first = build_request(body_size, rng, sequence=0, with_identifier=True)
    rest = tuple(
        build_request(body_size, rng, sequence=i, with_identifier=False)
        for i in range(1, variety + 1)
    )
    return PayloadSet(kind=kind, first=first, rest=rest)


def main() -> None:
    """Print the sizes of every payload kind."""
    for kind in BODY_SIZES:
        payloads = payload_set(kind, variety=4)
        print(f"{kind:6} first={len(payloads.first):>8} B  others~{payloads.mean_size:>10.0f} B")


if __name__ == "__main__":
    main()
