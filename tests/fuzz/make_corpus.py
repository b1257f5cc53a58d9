"""Writes the seed corpora of the fuzz targets (run once; the corpora are committed).

    python tests/fuzz/make_corpus.py [--vectors tests/fixtures/vectors]

corpus/derive/: one StreamTaps call per file, as varint32-length-delimited
StreamTapsRequests (what `decode_and_name.split_stream` cuts): every real Envoy vector
(buffered traces wrapped one per call, streamed segments in order, the synthetic calls),
plus hand-made hostile calls (path traversal, NUL, huge and invalid-UTF-8 values, no
identifier, empty messages, socket and empty traces).
corpus/naming/: the byte layout naming_target.py reads, for the same hostile values.
Files are named by the SHA-1 of their content, as libFuzzer names what it finds.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper  # noqa: E402
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest  # noqa: E402
from tests.fuzz.decode_and_name import length_delimited, split_stream  # noqa: E402
from tests.fuzz.naming_target import encode_naming_input  # noqa: E402

DEFAULT_VECTORS = HERE.parent / "fixtures" / "vectors"
MAX_SEED_BYTES = 16 * 1024

HOSTILE_AUTHORITIES = [
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "evil%2F..%2Fx",
    "a/b",
    "nul\x00in-the-middle",
    "\u202eevil.exe",
    "\ufb01le.example",
    "\u212aelvin.example",
    "CON",
    "-rf",
    ".hidden",
    "EXAMPLE.com:8080",
    "x" * 300,
    "y" * 70_000,
    "",
]
HOSTILE_TRACE_IDS = [
    ("x-b3-traceid", "../../../../tmp/x"),
    ("x-b3-traceid", "A7020847B1EC89328E3F8D357F373266"),
    ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("x-trace-id", "-leading-dash"),
    ("x-request-id", "." * 128),
    ("x-request-id", "z" * 129),
]


def _identified(request: StreamTapsRequest, tap_id: str, node_id: str, cluster: str) -> None:
    request.identifier.tap_id = tap_id
    request.identifier.node.id = node_id
    request.identifier.node.cluster = cluster


def hostile_calls() -> Iterable[list[bytes]]:
    for authority in HOSTILE_AUTHORITIES:
        request = StreamTapsRequest(trace_id=7)
        _identified(request, "tap-inbound", "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local", "a.ns")
        headers = request.trace.http_buffered_trace.request.headers
        headers.add(key=":authority", value=authority)
        headers.add(key="authorization", value="Bearer secret")
        yield [request.SerializeToString()]
    for key, value in HOSTILE_TRACE_IDS:
        request = StreamTapsRequest(trace_id=2**64 - 1)
        headers = request.trace.http_buffered_trace.request.headers
        headers.add(key=":authority", value="svc.ns:80")
        headers.add(key=key, value=value)
        yield [request.SerializeToString()]
    # Outbound, namespace from hostile node fields.
    for node_id, cluster in [
        ("sidecar~1.2.3.4~p.../..~../...svc.cluster.local", "x./etc"),
        ("sidecar~~~", "."),
        ("\x00~\x00~\x00~\x00", "\x00.\x00"),
    ]:
        request = StreamTapsRequest()
        _identified(request, "f5-tap-outbound", node_id, cluster)
        request.trace.http_buffered_trace.request.headers.add(key=":authority", value="a")
        yield [request.SerializeToString()]
    # raw_value with invalid UTF-8, set directly on the wire; no identifier at all.
    request = StreamTapsRequest()
    header = request.trace.http_buffered_trace.request.headers.add(key=":authority")
    header.raw_value = b"\xff\xfe/../\x00"
    trace_header = request.trace.http_buffered_trace.request.headers.add(key="x-b3-traceid")
    trace_header.raw_value = b"\xc3\x28" * 8
    yield [request.SerializeToString()]
    # Empty messages, an identifier alone, socket and empty traces, streamed pieces.
    socket = StreamTapsRequest()
    socket.trace.socket_buffered_trace.trace_id = 99
    empty = StreamTapsRequest(trace_id=5)
    empty.trace.SetInParent()
    ident_only = StreamTapsRequest()
    _identified(ident_only, "x", "y", "z")
    segment = StreamTapsRequest()
    segment.trace.http_streamed_trace_segment.trace_id = 11
    segment.trace.http_streamed_trace_segment.request_headers.headers.add(
        key=":authority", value="../seg"
    )
    body = StreamTapsRequest()
    body.trace.http_streamed_trace_segment.trace_id = 11
    body.trace.http_streamed_trace_segment.response_body_chunk.as_bytes = b"\x00" * 64
    orphan = StreamTapsRequest()
    orphan.trace.http_streamed_trace_segment.trace_id = 12
    orphan.trace.http_streamed_trace_segment.response_trailers.headers.add(key="a", value="b")
    yield [
        b"",
        ident_only.SerializeToString(),
        socket.SerializeToString(),
        empty.SerializeToString(),
        segment.SerializeToString(),
        body.SerializeToString(),
        orphan.SerializeToString(),
    ]


def vector_calls(vectors: Path) -> Iterable[list[bytes]]:
    for path in sorted(vectors.glob("buffered*/*.pb")):
        request = StreamTapsRequest(trace_id=1)
        _identified(request, "tap-emulator", "sidecar~1.2.3.4~p.ns~ns.svc.cluster.local", "x")
        request.trace.CopyFrom(TraceWrapper.FromString(path.read_bytes()))
        yield [request.SerializeToString()]
    for path in sorted(vectors.glob("streamed*/*.pb_length_delimited")):
        calls = []
        for index, raw in enumerate(split_stream(path.read_bytes())):
            request = StreamTapsRequest()
            if index == 0:
                _identified(request, "tap-inbound", "n", "c")
            request.trace.CopyFrom(TraceWrapper.FromString(raw))
            calls.append(request.SerializeToString())
        yield calls
    for path in sorted(vectors.glob("synthetic/*.pb_length_delimited")):
        yield split_stream(path.read_bytes())


def naming_inputs() -> Iterable[bytes]:
    for authority in HOSTILE_AUTHORITIES:
        for key, value in HOSTILE_TRACE_IDS[:3]:
            yield encode_naming_input(authority[:4096], key, value, "ns", "tap-inbound", 7)
    yield encode_naming_input("", "", "", "", "", 0)


def write_corpus(directory: Path, seeds: Iterable[bytes]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for seed in seeds:
        if len(seed) > MAX_SEED_BYTES:
            continue
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS)
    args = parser.parse_args()
    calls = list(hostile_calls())
    if args.vectors.is_dir():
        calls += list(vector_calls(args.vectors))
    else:
        print(f"no vectors at {args.vectors}: hostile seeds only", file=sys.stderr)
    derive = write_corpus(HERE / "corpus" / "derive", (length_delimited(c) for c in calls))
    naming = write_corpus(HERE / "corpus" / "naming", naming_inputs())
    print(f"corpus/derive: {derive} seeds, corpus/naming: {naming} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
