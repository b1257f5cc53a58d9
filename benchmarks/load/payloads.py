"""The benchmark's traffic: realistic `StreamTapsRequest`s, serialized once, made unique cheaply.

A *transaction* is what one proxy taps for one HTTP exchange:

- ``h1``: a buffered HTTP/1.1 trace (GET, or POST with a request body), one message;
- ``h2``: a buffered HTTP/2 trace (GET with a response body), one message;
- ``grpc``: a streamed gRPC call, five messages (segments): request headers, request body
  chunk (a gRPC frame), response headers, response body chunk, response trailers.

Bodies are drawn from a weighted size table, from empty to 64 KiB. A configurable fraction
of requests carries an ``authorization`` header, which the emulator redacts by default.

Every message is unique. Each transaction template is serialized once with *sentinels* in
the two places that identify it: the 32-hex-digit ``x-b3-traceid`` header (header messages)
and the 9-byte varint Envoy trace id of a streamed segment. Rendering a message splices the
real values in (same lengths, so the protobuf framing stays valid). Transaction ``k`` of
global stream ``g`` in run ``tag`` gets the trace id ``{tag:04x}{g:08x}{k:020x}``, so the
file it becomes is known in advance: ``<prefix>-<traceid>-<n>.pb`` with ``n`` the segment's
position (1 for a buffered trace), ``prefix`` the authority (inbound streams) or the proxy's
namespace (outbound streams), and a size computed here from the same template.

This module uses the product's generated code (``tap_emulator._proto``), never xds-protos,
so the write-only ceiling can build the very same file payloads in-process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from google.protobuf import struct_pb2, timestamp_pb2

from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from tap_emulator._proto.envoy.data.tap.v3.common_pb2 import Body
from tap_emulator._proto.envoy.data.tap.v3.http_pb2 import HttpBufferedTrace
from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.tools._tap_client import varint

TID_SENTINEL = "5e9a1e1d0b57ac1e5e9a1e1d0b57ac1e"
EID_SENTINEL = 0x1ABCDEF012345678  # in [2**56, 2**63): always a 9-byte varint
EID_BASE = 1 << 60
SLOT_TID = 0
SLOT_EID = 1
REDACTED = "REDACTED"
KINDS = ("h1", "h2", "grpc")
SEGMENTS_PER_KIND = {"h1": 1, "h2": 1, "grpc": 5}

DEFAULT_KINDS = "h1=0.4,h2=0.4,grpc=0.2"
#: Body sizes in bytes and their weights: empty to 64 KiB, mostly small.
DEFAULT_BODIES = "0=20,128=20,512=20,2048=20,8192=12,32768=5,65536=3"
DEFAULT_REDACT_FRACTION = 0.05
DEFAULT_TEMPLATES = 256

NAMESPACES = (
    "bookinfo",
    "payments",
    "checkout",
    "search",
    "identity",
    "inventory",
    "shipping",
    "frontend",
)
APPS = ("productpage", "reviews", "ratings", "details", "cart", "ledger", "gateway")
AUTHORITIES = (
    "reviews.bookinfo.svc.cluster.local:9080",
    "ratings.bookinfo.svc.cluster.local:9080",
    "Details.Bookinfo.svc.cluster.local:9080",  # mixed case: the emulator lowercases it
    "productpage:9080",
    "api.payments.svc.cluster.local",
    "ledger.payments.svc.cluster.local:8443",
    "cart.checkout:8080",
    "search.search.svc.cluster.local:9200",
    "auth.identity.svc.cluster.local:443",
    "stock.inventory.svc.cluster.local:50051",
    "tracking.shipping.svc.cluster.local:50051",
    "www.example.com",
)
GRPC_METHODS = (
    "/inventory.v1.Stock/Reserve",
    "/shipping.v2.Tracking/Lookup",
    "/payments.v1.Ledger/Post",
    "/search.v1.Index/Query",
)


def trace_id_hex(tag: int, stream: int, transaction: int) -> str:
    """The x-b3-traceid of transaction ``transaction`` of global stream ``stream``."""
    return f"{tag:04x}{stream:08x}{transaction:020x}"


def parse_trace_id(text: str) -> tuple[int, int, int] | None:
    """(tag, stream, transaction) back from a trace id, or None if it is not ours."""
    if len(text) != 32:
        return None
    try:
        return int(text[:4], 16), int(text[4:12], 16), int(text[12:], 16)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Mix:
    """What traffic to send: transaction kinds, body sizes, how many carry secrets."""

    kinds: tuple[tuple[str, float], ...]
    bodies: tuple[tuple[int, float], ...]
    redact_fraction: float = DEFAULT_REDACT_FRACTION
    templates: int = DEFAULT_TEMPLATES
    seed: int = 6

    @classmethod
    def parse(
        cls,
        kinds: str = DEFAULT_KINDS,
        bodies: str = DEFAULT_BODIES,
        redact_fraction: float = DEFAULT_REDACT_FRACTION,
        templates: int = DEFAULT_TEMPLATES,
        seed: int = 6,
    ) -> Mix:
        """Build a mix from ``name=weight,...`` and ``bytes=weight,...`` strings."""
        parsed_kinds = tuple((k, float(w)) for k, w in _pairs(kinds))
        unknown = [k for k, _ in parsed_kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown transaction kinds {unknown}; known: {KINDS}")
        parsed_bodies = tuple((int(k), float(w)) for k, w in _pairs(bodies))
        if any(size < 0 or size > 16 * 1024 * 1024 for size, _ in parsed_bodies):
            raise ValueError("body sizes must be between 0 and 16 MiB")
        return cls(parsed_kinds, parsed_bodies, redact_fraction, templates, seed)

    def describe(self) -> dict[str, object]:
        return {
            "kinds": dict(self.kinds),
            "bodies": {str(size): weight for size, weight in self.bodies},
            "redact_fraction": self.redact_fraction,
            "templates": self.templates,
            "seed": self.seed,
        }

    def cli_args(self) -> list[str]:
        """The load generator's flags that rebuild this mix."""
        return [
            "--kinds",
            ",".join(f"{k}={w:g}" for k, w in self.kinds),
            "--bodies",
            ",".join(f"{s}={w:g}" for s, w in self.bodies),
            "--redact-fraction",
            f"{self.redact_fraction:g}",
            "--templates",
            str(self.templates),
            "--seed",
            str(self.seed),
        ]


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise ValueError(f"expected NAME=WEIGHT, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """One serialized message with slots for the trace id and the Envoy trace id."""

    pieces: tuple[bytes, ...]
    slots: tuple[int, ...]
    file_payload: bytes  # what the emulator must write: the (redacted) TraceWrapper

    @property
    def file_size(self) -> int:
        return len(self.file_payload)

    @property
    def wire_size(self) -> int:
        return sum(len(p) for p in self.pieces) + sum(
            32 if slot == SLOT_TID else 9 for slot in self.slots
        )

    def render(self, tid: bytes, eid: bytes) -> bytes:
        pieces = self.pieces
        if not self.slots:
            return pieces[0]
        parts = [pieces[0]]
        for index, slot in enumerate(self.slots):
            parts.append(tid if slot == SLOT_TID else eid)
            parts.append(pieces[index + 1])
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Transaction:
    """A tapped exchange: its kind, the authority it names, and its messages in order."""

    kind: str
    authority: str
    messages: tuple[MessageTemplate, ...]

    @property
    def file_sizes(self) -> tuple[int, ...]:
        return tuple(m.file_size for m in self.messages)


@dataclass(slots=True)
class Catalog:
    """Every transaction template of a mix, and cycle facts the verifier needs."""

    mix: Mix
    transactions: list[Transaction]
    segments: list[int] = field(default_factory=list)
    prefix_sums: list[int] = field(default_factory=list)  # over the list repeated twice

    def __post_init__(self) -> None:
        self.segments = [len(t.messages) for t in self.transactions]
        sums = [0]
        for count in self.segments + self.segments:
            sums.append(sums[-1] + count)
        self.prefix_sums = sums

    @property
    def cycle_messages(self) -> int:
        return self.prefix_sums[len(self.transactions)]

    def offset(self, stream: int) -> int:
        """Where global stream ``stream`` starts in the template list."""
        return (stream * 7919) % len(self.transactions)

    def template(self, stream: int, transaction: int) -> Transaction:
        return self.transactions[(self.offset(stream) + transaction) % len(self.transactions)]

    def message_index(self, stream: int, transaction: int, segment: int) -> int:
        """Position in its stream of segment ``segment`` (0-based) of a transaction."""
        count = len(self.transactions)
        cycles, rest = divmod(transaction, count)
        start = self.offset(stream)
        return (
            cycles * self.cycle_messages
            + self.prefix_sums[start + rest]
            - self.prefix_sums[start]
            + segment
        )

    def stats(self) -> dict[str, float]:
        """Mean wire and file sizes per message, and the share of each kind, by messages."""
        messages = [m for t in self.transactions for m in t.messages]
        by_kind: dict[str, int] = {}
        for t in self.transactions:
            by_kind[t.kind] = by_kind.get(t.kind, 0) + len(t.messages)
        out: dict[str, float] = {
            "mean_wire_bytes": sum(m.wire_size for m in messages) / len(messages),
            "mean_file_bytes": sum(m.file_size for m in messages) / len(messages),
            "max_wire_bytes": max(m.wire_size for m in messages),
            "messages_per_transaction": len(messages) / len(self.transactions),
        }
        for kind, count in sorted(by_kind.items()):
            out[f"share_{kind}"] = count / len(messages)
        return out


# --- building ---------------------------------------------------------------------------


def _h(key: str, value: str) -> HeaderValue:
    return HeaderValue(key=key, value=value)


def _weighted(rng: random.Random, table: tuple[tuple[object, float], ...]) -> object:
    return rng.choices([item for item, _ in table], weights=[w for _, w in table])[0]


def _body_size(rng: random.Random, mix: Mix) -> int:
    size = _weighted(rng, mix.bodies)
    assert isinstance(size, int)
    return size


def _common_request_headers(rng: random.Random, secret: bool) -> list[HeaderValue]:
    headers = [
        _h("x-request-id", f"{rng.getrandbits(128):032x}"[:8] + "-6d1e-4c2b-9a57-2f9e1c3b7d40"),
        _h("x-b3-traceid", TID_SENTINEL),
        _h("x-b3-spanid", f"{rng.getrandbits(64):016x}"),
        _h("x-b3-sampled", "1"),
        _h("x-envoy-attempt-count", "1"),
        _h("x-forwarded-client-cert", "By=spiffe://cluster.local/ns/default/sa/default;Hash=ab"),
    ]
    if secret:
        headers.append(_h("authorization", "Bearer " + f"{rng.getrandbits(256):064x}"))
    return headers


def _response_headers(rng: random.Random, status: int, body: int, ctype: str) -> list[HeaderValue]:
    return [
        _h(":status", str(status)),
        _h("content-type", ctype),
        _h("content-length", str(body)),
        _h("date", "Fri, 27 Nov 2026 06:14:00 GMT"),
        _h("x-envoy-upstream-service-time", str(rng.randrange(1, 250))),
        _h("server", "istio-envoy"),
    ]


def _redacted(trace: TraceWrapper) -> TraceWrapper:
    """What the emulator's default redaction makes of a trace (our own reading of it)."""
    copy = TraceWrapper()
    copy.CopyFrom(trace)
    kind = copy.WhichOneof("trace")
    header_lists = []
    if kind == "http_buffered_trace":
        for message in (copy.http_buffered_trace.request, copy.http_buffered_trace.response):
            header_lists += [message.headers, message.trailers]
    elif kind == "http_streamed_trace_segment":
        segment = copy.http_streamed_trace_segment
        piece = segment.WhichOneof("message_piece")
        if piece in ("request_headers", "request_trailers", "response_headers"):
            header_lists.append(getattr(segment, piece).headers)
        if piece == "response_trailers":
            header_lists.append(segment.response_trailers.headers)
    secret_names = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
    for headers in header_lists:
        for header in headers:
            if header.key.lower() in secret_names:
                if header.value:
                    header.value = REDACTED
                if header.raw_value:
                    header.raw_value = REDACTED.encode()
    return copy


def _template(trace: TraceWrapper, outer_trace_id: int) -> MessageTemplate:
    """Serialize a message around its sentinels and cut it into pieces and slots."""
    request = StreamTapsRequest(trace_id=outer_trace_id)
    request.trace.CopyFrom(trace)
    wire = request.SerializeToString()
    tid = TID_SENTINEL.encode()
    eid = varint(EID_SENTINEL)
    spots: list[tuple[int, int, int]] = []
    for needle, slot in ((tid, SLOT_TID), (eid, SLOT_EID)):
        start = 0
        while (found := wire.find(needle, start)) >= 0:
            spots.append((found, len(needle), slot))
            start = found + 1
    spots.sort()
    pieces: list[bytes] = []
    slots: list[int] = []
    cursor = 0
    for position, length, slot in spots:
        pieces.append(wire[cursor:position])
        slots.append(slot)
        cursor = position + length
    pieces.append(wire[cursor:])
    payload = _redacted(trace).SerializeToString()
    return MessageTemplate(tuple(pieces), tuple(slots), payload)


def _buffered(rng: random.Random, mix: Mix, kind: str) -> Transaction:
    authority = rng.choice(AUTHORITIES)
    secret = rng.random() < mix.redact_fraction
    request = HttpBufferedTrace.Message()
    response = HttpBufferedTrace.Message()
    body = _body_size(rng, mix)
    if kind == "h1":
        post = rng.random() < 0.5
        request_body = min(_body_size(rng, mix), 16 * 1024) if post else 0
        request.headers.extend(
            [
                _h(":authority", authority),
                _h(":path", f"/api/v1/items/{rng.randrange(100_000)}?expand=details"),
                _h(":method", "POST" if post else "GET"),
                _h(":scheme", "http"),
                _h("user-agent", "curl/8.5.0"),
                _h("accept", "*/*"),
                _h("x-forwarded-proto", "http"),
                *(
                    [
                        _h("content-type", "application/json"),
                        _h("content-length", str(request_body)),
                    ]
                    if post
                    else []
                ),
                *_common_request_headers(rng, secret),
            ]
        )
        if post:
            request.body.as_bytes = rng.randbytes(request_body)
    else:
        request.headers.extend(
            [
                _h(":authority", authority),
                _h(":path", f"/reviews/{rng.randrange(10_000)}?lang=en"),
                _h(":method", "GET"),
                _h(":scheme", "https"),
                _h("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"),
                _h("accept", "application/json"),
                _h("accept-encoding", "gzip, deflate, br"),
                _h("x-forwarded-proto", "https"),
                *_common_request_headers(rng, secret),
            ]
        )
    response.headers.extend(_response_headers(rng, 200, body, "application/json"))
    response.body.as_bytes = rng.randbytes(body)
    seconds = 1_795_756_440 + rng.randrange(3600)
    request.headers_received_time.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds))
    response.headers_received_time.CopyFrom(
        timestamp_pb2.Timestamp(seconds=seconds, nanos=rng.randrange(10**9))
    )
    trace = TraceWrapper()
    trace.http_buffered_trace.request.CopyFrom(request)
    trace.http_buffered_trace.response.CopyFrom(response)
    return Transaction(kind, authority, (_template(trace, EID_SENTINEL),))


def _grpc_frame(rng: random.Random, size: int) -> bytes:
    payload = rng.randbytes(max(0, size - 5))
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def _streamed(rng: random.Random, mix: Mix) -> Transaction:
    authority = rng.choice(AUTHORITIES)
    secret = rng.random() < mix.redact_fraction

    def segment() -> TraceWrapper:
        trace = TraceWrapper()
        trace.http_streamed_trace_segment.trace_id = EID_SENTINEL
        return trace

    request_headers = segment()
    request_headers.http_streamed_trace_segment.request_headers.CopyFrom(
        HeaderMap(
            headers=[
                _h(":authority", authority),
                _h(":path", rng.choice(GRPC_METHODS)),
                _h(":method", "POST"),
                _h(":scheme", "http"),
                _h("content-type", "application/grpc"),
                _h("te", "trailers"),
                _h("grpc-timeout", "5S"),
                _h("user-agent", "grpc-go/1.68.0"),
                *_common_request_headers(rng, secret),
            ]
        )
    )
    request_body = segment()
    request_body.http_streamed_trace_segment.request_body_chunk.CopyFrom(
        Body(as_bytes=_grpc_frame(rng, _body_size(rng, mix)))
    )
    response_headers = segment()
    response_headers.http_streamed_trace_segment.response_headers.CopyFrom(
        HeaderMap(
            headers=[
                _h(":status", "200"),
                _h("content-type", "application/grpc"),
                _h("date", "Fri, 27 Nov 2026 06:14:00 GMT"),
                _h("server", "istio-envoy"),
            ]
        )
    )
    response_body = segment()
    response_body.http_streamed_trace_segment.response_body_chunk.CopyFrom(
        Body(as_bytes=_grpc_frame(rng, _body_size(rng, mix)))
    )
    trailers = segment()
    trailers.http_streamed_trace_segment.response_trailers.CopyFrom(
        HeaderMap(headers=[_h("grpc-status", "0"), _h("grpc-message", "")])
    )
    segments = (request_headers, request_body, response_headers, response_body, trailers)
    # The outer trace_id is Envoy's too; the segment's own id is what names segments.
    messages = tuple(_template(s, EID_SENTINEL) for s in segments)
    return Transaction("grpc", authority, messages)


def build_catalog(mix: Mix) -> Catalog:
    """Every transaction template of a mix, deterministically from its seed."""
    rng = random.Random(mix.seed)
    transactions = []
    for _ in range(mix.templates):
        kind = _weighted(rng, mix.kinds)
        assert isinstance(kind, str)
        transactions.append(_streamed(rng, mix) if kind == "grpc" else _buffered(rng, mix, kind))
    for transaction in transactions:
        for message in transaction.messages:
            expected = 1 if transaction.kind != "grpc" or message is transaction.messages[0] else 0
            tids = sum(1 for s in message.slots if s == SLOT_TID)
            if tids != expected:
                raise RuntimeError("a sentinel was found in random bytes; change the seed")
    return catalog_of(mix, transactions)


def catalog_of(mix: Mix, transactions: list[Transaction]) -> Catalog:
    return Catalog(mix, transactions)


# --- who sends ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    """One simulated Envoy sidecar: an Istio node and its namespace."""

    index: int
    namespace: str
    app: str

    @property
    def node_id(self) -> str:
        p = self.index
        pod = f"{self.app}-v1-{p:x}7d9f8b6c5-x2k4q"
        domain = f"{self.namespace}.svc.cluster.local"
        return f"sidecar~10.{(p >> 8) & 255}.{p & 255}.7~{pod}.{self.namespace}~{domain}"

    def identifier(self, direction: str) -> bytes:
        """A serialized StreamTapsRequest holding only the identifier for one tap."""
        request = StreamTapsRequest()
        identifier = request.identifier
        identifier.tap_id = f"istio-tap.{self.app}.{direction}"
        identifier.node.id = self.node_id
        identifier.node.cluster = f"{self.app}.{self.namespace}"
        metadata = struct_pb2.Struct()
        metadata.update({"NAMESPACE": self.namespace, "ISTIO_VERSION": "1.24.2"})
        identifier.node.metadata.CopyFrom(metadata)
        serialized: bytes = request.SerializeToString()
        return serialized


def proxy_of(stream: int) -> Proxy:
    """Global stream ``g`` belongs to proxy ``g // 2``: even streams inbound, odd outbound."""
    index = stream // 2
    return Proxy(index, NAMESPACES[index % len(NAMESPACES)], APPS[index % len(APPS)])


def direction_of(stream: int) -> str:
    return "inbound" if stream % 2 == 0 else "outbound"


def expected_prefix(stream: int, transaction: Transaction) -> str:
    """The file-name prefix the emulator must use for this stream's transaction."""
    if direction_of(stream) == "inbound":
        return transaction.authority.lower()
    return proxy_of(stream).namespace


def main() -> None:
    """Print the default mix's statistics."""
    catalog = build_catalog(Mix.parse())
    for key, value in catalog.stats().items():
        print(f"{key:28} {value:12.3f}")


if __name__ == "__main__":
    main()
