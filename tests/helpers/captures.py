"""Trace files for the capture reader's tests: TraceWrapper bytes built with the product's own
generated code, and the real Envoy vectors cut into the emulator's one-file-per-piece form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.captures.formats import split_traces
from tests.helpers.paths import VECTORS

B3 = "a7020847b1ec89328e3f8d357f373266"
AUTHORITY = "httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080"

# The vector pairs: buffered/X.pb and streamed/X.pb_length_delimited are the same request,
# made twice (README of the vectors).
PAIRED_CASES = sorted(
    path.stem
    for path in (VECTORS / "buffered").glob("*.pb")
    if (VECTORS / "streamed" / f"{path.stem}.pb_length_delimited").exists()
)


def vector_traces(path: Path) -> list[bytes]:
    return split_traces(str(path), path.read_bytes())


def segment(trace_id: int, piece: str | None, **value: Any) -> bytes:
    """One streamed segment; `value` fills the piece (headers=[(k, v)], as_bytes=b'', ...)."""
    trace = TraceWrapper()
    segment = trace.http_streamed_trace_segment
    segment.trace_id = trace_id
    if piece is None:
        return trace.SerializeToString()
    target = getattr(segment, piece)
    if piece.endswith(("headers", "trailers")):
        for key, text in value.get("headers", []):
            target.headers.add(key=key, value=text)
    else:
        target.as_bytes = value.get("as_bytes", b"")
        target.truncated = value.get("truncated", False)
    return trace.SerializeToString()


def buffered(
    request: list[tuple[str, str]] | None,
    response: list[tuple[str, str]] | None,
    request_body: bytes = b"",
    response_body: bytes = b"",
    connection_port: int | None = None,
) -> bytes:
    trace = TraceWrapper()
    buffered = trace.http_buffered_trace
    if request is not None:
        for key, value in request:
            buffered.request.headers.add(key=key, value=value)
        if request_body:
            buffered.request.body.as_bytes = request_body
    if response is not None:
        for key, value in response:
            buffered.response.headers.add(key=key, value=value)
        if response_body:
            buffered.response.body.as_bytes = response_body
    if connection_port is not None:
        remote = buffered.downstream_connection.remote_address.socket_address
        remote.address, remote.port_value = "10.1.2.3", connection_port
    return trace.SerializeToString()


def request_headers(trace: str = B3, path: str = "/get") -> list[tuple[str, str]]:
    return [(":authority", AUTHORITY), (":path", path), (":method", "GET"), ("x-b3-traceid", trace)]


def write_emulator_pieces(
    directory: Path, stem: str, pieces: list[bytes], first_sequence: int = 1
) -> list[Path]:
    """`pieces` as the emulator writes them: `<stem>-<seq>.pb`, one each."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for number, raw in enumerate(pieces, start=first_sequence):
        path = directory / f"{stem}-{number}.pb"
        path.write_bytes(raw)
        written.append(path)
    return written
