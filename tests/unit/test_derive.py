"""Derive: which files a StreamTapsRequest becomes, what they are called and what they hold."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderValue
from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter
from tap_emulator.derive.deriver import Derivation, Deriver, NamingPolicy
from tap_emulator.derive.naming import DEFAULT_TRACE_ID_HEADERS, Identity, NameFormat
from tap_emulator.derive.redact import DEFAULT_REDACT_HEADERS
from tap_emulator.labels import Direction, TraceKind
from tests.helpers.paths import VECTORS as VECTORS_DIR

# --- helpers ----------------------------------------------------------------------------

B3 = "a7020847b1ec89328e3f8d357f373266"
AUTHORITY = "api.example:8080"
ENVOY_ID = 0x1F2E3D4C
ENVOY_HEX = "1f2e3d4c"
INBOUND = Identity(Direction.INBOUND, direction_known=True, client_namespace="client-ns")
OUTBOUND = Identity(Direction.OUTBOUND, direction_known=True, client_namespace="client-ns")


def make_deriver(
    name_format: NameFormat = NameFormat.PLAIN,
    redact_headers: Sequence[str] = DEFAULT_REDACT_HEADERS,
) -> Deriver:
    policy = NamingPolicy(
        name_format=name_format,
        trace_id_headers=DEFAULT_TRACE_ID_HEADERS,
        redact_headers=frozenset(redact_headers),
    )
    return Deriver(
        policy,
        SequenceCounter(max_entries=1000, idle_seconds=3600.0),
        SegmentNames(max_entries=1000, idle_seconds=3600.0),
    )


def headers(*pairs: tuple[str, str]) -> list[HeaderValue]:
    return [HeaderValue(key=key, value=value) for key, value in pairs]


def request_headers(authority: str = AUTHORITY, trace: str = B3) -> list[HeaderValue]:
    return headers(
        (":authority", authority), (":method", "POST"), (":path", "/x"), ("x-b3-traceid", trace)
    )


def buffered(envoy_id: int = ENVOY_ID) -> StreamTapsRequest:
    message = StreamTapsRequest(trace_id=envoy_id)
    http = message.trace.http_buffered_trace
    http.request.headers.extend(request_headers())
    http.request.body.as_bytes = b"ping"
    http.request.trailers.extend(headers(("x-req-trailer", "1")))
    http.response.headers.extend(headers((":status", "200")))
    http.response.body.as_bytes = b"pong"
    http.response.trailers.extend(headers(("grpc-status", "0")))
    http.downstream_connection.remote_address.socket_address.address = "10.0.0.7"
    http.upstream_connection.remote_address.socket_address.address = "10.0.0.9"
    return message


def segment(
    piece: str | None,
    segment_trace_id: int = ENVOY_ID,
    *,
    piece_headers: Sequence[HeaderValue] = (),
    body: bytes = b"chunk",
    request_trace_id: int = 0,
) -> StreamTapsRequest:
    """A streamed segment; `piece` None is a segment with no message piece (Envoy's EMPTY)."""
    message = StreamTapsRequest(trace_id=request_trace_id)
    part = message.trace.http_streamed_trace_segment
    part.trace_id = segment_trace_id
    if piece is not None and piece.endswith("_body_chunk"):
        getattr(part, piece).as_bytes = body
    elif piece is not None:
        getattr(part, piece).headers.extend(piece_headers)
    return message


def request_headers_segment(
    segment_trace_id: int = ENVOY_ID, authority: str = AUTHORITY
) -> StreamTapsRequest:
    return segment("request_headers", segment_trace_id, piece_headers=request_headers(authority))


def file_names(derivation: Derivation) -> list[str]:
    return [f"{planned.stem}-{planned.sequence}.pb" for planned in derivation.files]


def derive_names(
    deriver: Deriver, message: StreamTapsRequest, identity: Identity = INBOUND, stream: int = 1
) -> list[str]:
    return file_names(deriver.derive(message, identity, stream))


# --- buffered traces --------------------------------------------------------------------


def test_buffered_trace_becomes_one_file() -> None:
    derivation = make_deriver().derive(buffered(), INBOUND, 1)

    assert derivation.kind is TraceKind.BUFFERED
    assert file_names(derivation) == [f"{AUTHORITY}-{B3}-1.pb"]


def test_buffered_payload_is_the_serialized_trace() -> None:
    message = buffered()
    sent = message.trace.SerializeToString()

    [planned] = make_deriver().derive(message, INBOUND, 1).files

    assert planned.payload == sent


def test_buffered_payload_parses_back_equal_to_the_input() -> None:
    message = buffered()
    original = TraceWrapper()
    original.CopyFrom(message.trace)

    [planned] = make_deriver().derive(message, INBOUND, 1).files

    assert TraceWrapper.FromString(planned.payload) == original


def test_buffered_outbound_trace_is_named_after_the_client_namespace() -> None:
    assert derive_names(make_deriver(), buffered(), OUTBOUND) == [f"client-ns-{B3}-1.pb"]


def test_req_res_format_writes_a_buffered_trace_as_two_files() -> None:
    deriver = make_deriver(NameFormat.REQ_RES)

    names = derive_names(deriver, buffered())

    assert names == [f"{AUTHORITY}-{B3}-req-1.pb", f"{AUTHORITY}-{B3}-res-1.pb"]


def test_req_res_request_half_holds_only_the_request_and_connections() -> None:
    message = buffered()
    sent = TraceWrapper()
    sent.CopyFrom(message.trace)

    request_file, _ = make_deriver(NameFormat.REQ_RES).derive(message, INBOUND, 1).files

    half = TraceWrapper.FromString(request_file.payload).http_buffered_trace
    assert half.request == sent.http_buffered_trace.request
    assert not half.HasField("response")
    assert half.downstream_connection == sent.http_buffered_trace.downstream_connection
    assert half.upstream_connection == sent.http_buffered_trace.upstream_connection


def test_req_res_response_half_holds_only_the_response() -> None:
    message = buffered()
    sent = TraceWrapper()
    sent.CopyFrom(message.trace)

    _, response_file = make_deriver(NameFormat.REQ_RES).derive(message, INBOUND, 1).files

    half = TraceWrapper.FromString(response_file.payload).http_buffered_trace
    assert half.response == sent.http_buffered_trace.response
    assert not half.HasField("request")


def test_req_res_halves_count_on_their_own() -> None:
    deriver = make_deriver(NameFormat.REQ_RES)
    derive_names(deriver, buffered())

    names = derive_names(deriver, buffered())

    assert names == [f"{AUTHORITY}-{B3}-req-2.pb", f"{AUTHORITY}-{B3}-res-2.pb"]


def test_buffered_trace_without_request_is_still_written() -> None:
    message = StreamTapsRequest(trace_id=ENVOY_ID)
    message.trace.http_buffered_trace.response.headers.extend(headers((":status", "400")))

    assert derive_names(make_deriver(), message) == [f"no-authority-{ENVOY_HEX}-1.pb"]


# --- streamed segments ------------------------------------------------------------------


def test_every_streamed_segment_becomes_one_file_named_after_its_request_headers() -> None:
    deriver = make_deriver()
    pieces = ["request_body_chunk", "request_trailers", "response_headers", "response_body_chunk"]

    names = derive_names(deriver, request_headers_segment())
    for piece in [*pieces, "response_trailers"]:
        names += derive_names(deriver, segment(piece))

    assert names == [f"{AUTHORITY}-{B3}-{n}.pb" for n in range(1, 7)]


def test_streamed_segment_kind_is_streamed_segment() -> None:
    assert make_deriver().derive(request_headers_segment(), INBOUND, 1).kind is (
        TraceKind.STREAMED_SEGMENT
    )


def test_same_envoy_trace_id_on_another_stream_is_another_transaction() -> None:
    deriver = make_deriver()
    derive_names(deriver, request_headers_segment(authority="one.example"), stream=1)
    derive_names(deriver, request_headers_segment(authority="two.example"), stream=2)

    first = derive_names(deriver, segment("response_headers"), stream=1)
    second = derive_names(deriver, segment("response_headers"), stream=2)

    assert first == [f"one.example-{B3}-2.pb"]
    assert second == [f"two.example-{B3}-2.pb"]


def test_another_envoy_trace_id_on_the_same_stream_is_another_transaction() -> None:
    deriver = make_deriver()
    derive_names(deriver, request_headers_segment(111, authority="one.example"))

    assert derive_names(deriver, segment("response_headers", 222)) == ["no-authority-de-1.pb"]


def test_segment_whose_headers_were_never_seen_is_written_under_the_inbound_placeholder() -> None:
    names = derive_names(make_deriver(), segment("response_body_chunk"))

    assert names == [f"no-authority-{ENVOY_HEX}-1.pb"]


def test_segment_whose_headers_were_never_seen_is_written_under_the_outbound_namespace() -> None:
    names = derive_names(make_deriver(), segment("response_body_chunk"), OUTBOUND)

    assert names == [f"client-ns-{ENVOY_HEX}-1.pb"]


def test_segment_without_its_own_trace_id_uses_the_requests() -> None:
    message = segment("response_body_chunk", 0, request_trace_id=0xBEEF)

    assert derive_names(make_deriver(), message) == ["no-authority-beef-1.pb"]


def test_orphan_segments_of_one_transaction_share_a_stem() -> None:
    deriver = make_deriver()

    names = [derive_names(deriver, segment(piece))[0] for piece in (None, "response_headers")]

    assert names == [f"no-authority-{ENVOY_HEX}-1.pb", f"no-authority-{ENVOY_HEX}-2.pb"]


def test_forgotten_stream_no_longer_names_its_segments() -> None:
    deriver = make_deriver()
    derive_names(deriver, request_headers_segment())

    deriver.forget_stream(1)

    assert derive_names(deriver, segment("response_headers")) == [f"no-authority-{ENVOY_HEX}-1.pb"]


def test_forgetting_one_stream_keeps_another_streams_names() -> None:
    deriver = make_deriver()
    derive_names(deriver, request_headers_segment(), stream=2)

    deriver.forget_stream(1)

    assert derive_names(deriver, segment("response_headers"), stream=2) == [
        f"{AUTHORITY}-{B3}-2.pb"
    ]


def test_segment_payload_is_the_serialized_segment_and_parses_back() -> None:
    message = request_headers_segment()
    sent = TraceWrapper()
    sent.CopyFrom(message.trace)

    [planned] = make_deriver().derive(message, INBOUND, 1).files

    assert planned.payload == sent.SerializeToString()
    assert TraceWrapper.FromString(planned.payload) == sent


@pytest.mark.parametrize("piece", ["request_body_chunk", "request_trailers"])
def test_req_res_request_segments_go_to_req(piece: str) -> None:
    deriver = make_deriver(NameFormat.REQ_RES)
    derive_names(deriver, request_headers_segment())

    assert derive_names(deriver, segment(piece)) == [f"{AUTHORITY}-{B3}-req-2.pb"]


@pytest.mark.parametrize("piece", ["response_headers", "response_body_chunk", "response_trailers"])
def test_req_res_response_segments_go_to_res(piece: str) -> None:
    deriver = make_deriver(NameFormat.REQ_RES)
    derive_names(deriver, request_headers_segment())

    assert derive_names(deriver, segment(piece)) == [f"{AUTHORITY}-{B3}-res-1.pb"]


def test_req_res_empty_first_segment_goes_to_req() -> None:
    assert derive_names(make_deriver(NameFormat.REQ_RES), segment(None)) == [
        f"no-authority-{ENVOY_HEX}-req-1.pb"
    ]


def test_req_res_segment_halves_have_their_own_counters() -> None:
    deriver = make_deriver(NameFormat.REQ_RES)
    order = [
        "request_headers",
        "request_body_chunk",
        "response_headers",
        "request_body_chunk",
        "response_body_chunk",
        "response_trailers",
    ]

    names = [
        derive_names(
            deriver, request_headers_segment() if piece == "request_headers" else segment(piece)
        )[0]
        for piece in order
    ]

    stem = f"{AUTHORITY}-{B3}"
    assert names == [
        f"{stem}-req-1.pb",
        f"{stem}-req-2.pb",
        f"{stem}-res-1.pb",
        f"{stem}-req-3.pb",
        f"{stem}-res-2.pb",
        f"{stem}-res-3.pb",
    ]


# --- socket, empty and trace-less messages ----------------------------------------------


def test_socket_buffered_trace_gets_the_socket_fallback_name() -> None:
    message = StreamTapsRequest(trace_id=1)
    message.trace.socket_buffered_trace.trace_id = 0xC0FFEE

    derivation = make_deriver().derive(message, INBOUND, 1)

    assert derivation.kind is TraceKind.SOCKET
    assert file_names(derivation) == ["socket-trace-c0ffee-1.pb"]


def test_socket_streamed_segment_gets_the_socket_fallback_name() -> None:
    message = StreamTapsRequest()
    message.trace.socket_streamed_trace_segment.trace_id = 0xC0FFEE
    message.trace.socket_streamed_trace_segment.event.read.data.as_bytes = b"x"

    assert derive_names(make_deriver(), message) == ["socket-trace-c0ffee-1.pb"]


def test_socket_trace_without_its_own_id_uses_the_requests() -> None:
    message = StreamTapsRequest(trace_id=0xAB)
    message.trace.socket_buffered_trace.connection.local_address.socket_address.port_value = 1

    assert derive_names(make_deriver(), message) == ["socket-trace-ab-1.pb"]


def test_socket_traces_of_one_id_get_successive_sequences() -> None:
    deriver = make_deriver()
    message = StreamTapsRequest()
    message.trace.socket_buffered_trace.trace_id = 5

    assert derive_names(deriver, message) + derive_names(deriver, message) == [
        "socket-trace-5-1.pb",
        "socket-trace-5-2.pb",
    ]


def test_socket_trace_payload_is_the_serialized_trace() -> None:
    message = StreamTapsRequest()
    message.trace.socket_buffered_trace.trace_id = 5
    message.trace.socket_buffered_trace.events.add().write.data.as_bytes = b"GET / HTTP/1.1\r\n"

    [planned] = make_deriver().derive(message, INBOUND, 1).files

    assert planned.payload == message.trace.SerializeToString()


def test_an_empty_trace_becomes_no_file() -> None:
    message = StreamTapsRequest(trace_id=0x99)
    message.trace.SetInParent()

    derivation = make_deriver().derive(message, INBOUND, 1)

    assert derivation.kind is TraceKind.NONE
    assert derivation.files == []


def test_a_trace_of_a_kind_we_do_not_know_gets_the_empty_fallback_name() -> None:
    """A newer Envoy's trace kind decodes as unknown fields: kept, under the fallback name."""
    unknown_kind = b"\x2a\x03abc"  # TraceWrapper field 5, length-delimited
    message = StreamTapsRequest(trace_id=0x99)
    message.trace.MergeFromString(unknown_kind)

    derivation = make_deriver().derive(message, INBOUND, 1)

    assert derivation.kind is TraceKind.OTHER
    assert file_names(derivation) == ["empty-trace-99-1.pb"]
    assert derivation.files[0].payload == unknown_kind


def test_message_without_a_trace_becomes_no_file() -> None:
    message = StreamTapsRequest()
    message.identifier.tap_id = "pi2-filter-inbound"

    derivation = make_deriver().derive(message, INBOUND, 1)

    assert derivation.kind is TraceKind.NONE
    assert derivation.files == []


# --- what naming had to do, for the metrics ---------------------------------------------


def test_sanitised_authority_is_counted() -> None:
    message = buffered()
    message.trace.http_buffered_trace.request.headers[0].value = "evil/../x"

    derivation = make_deriver().derive(message, INBOUND, 1)

    assert derivation.sanitized == 1
    assert derivation.truncated == 0


def test_truncated_authority_is_counted() -> None:
    message = buffered()
    message.trace.http_buffered_trace.request.headers[0].value = "a" * 500

    assert make_deriver().derive(message, INBOUND, 1).truncated == 1


# --- real Envoy vectors -----------------------------------------------------------------

VECTORS = VECTORS_DIR
SAFE = re.compile(r"[^A-Za-z0-9._:-]")
HEX_IDS = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")


def manifest_entries() -> dict[str, dict[str, Any]]:
    """Per-file manifest entries by relative path (`buffered/h1_get_b3.pb`)."""
    manifest = VECTORS / "manifest.json"
    cases = json.loads(manifest.read_text())["files"]
    return {entry["file"]: entry for case in cases for entry in case["files"]}


MANIFEST = manifest_entries()


def vector_params(directory: str, suffix: str) -> list[Any]:
    files = sorted(
        name for name in MANIFEST if name.startswith(f"{directory}/") and name.endswith(suffix)
    )
    assert files, f"no {directory}/*{suffix} vectors in {VECTORS}"
    return files


def envoy_id_of(entry: dict[str, Any]) -> int:
    """Envoy's own file name is `tap_<stream id><ext>`; that id is the trace's trace_id."""
    return int(entry["envoy_name"].removeprefix("tap_").split(".", 1)[0])


def expected_trace_id(summary: dict[str, Any], envoy_id: int) -> str:
    """The trace id the naming rules give the headers the manifest recorded."""
    if HEX_IDS.fullmatch(summary.get("x-b3-traceid") or ""):
        return str(summary["x-b3-traceid"])
    first_b3_field = (summary.get("b3") or "").split("-", 1)[0]
    if HEX_IDS.fullmatch(first_b3_field):
        return first_b3_field
    if summary.get("traceparent"):
        return str(summary["traceparent"]).split("-")[1]
    for header in ("x-trace-id", "x-request-id"):
        value = summary.get(header)
        if value:
            return str(value).lower() if re.fullmatch(r"[0-9a-fA-F-]+", value) else str(value)
    return format(envoy_id, "x")


def expected_prefix(summary: dict[str, Any]) -> str:
    authority = summary.get("authority") or ""
    if not authority:
        return "no-authority"
    prefix = SAFE.sub(
        "_",
        authority.translate(
            str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
        ),
    )
    return "_" + prefix if prefix.startswith((".", "-")) else prefix


def assert_stem(stem: str, summary: dict[str, Any], envoy_id: int) -> None:
    prefix = expected_prefix(summary)
    trace_id = expected_trace_id(summary, envoy_id)
    if len(prefix) <= 100:
        assert stem == f"{prefix}-{trace_id}"
    else:  # over its budget: cut, tagged with a hash, still ending in the trace id
        assert stem.startswith(prefix[:100])
        assert stem.endswith(f"-{trace_id}")
        assert len(stem) < len(prefix) + 1 + len(trace_id)


def has_redactable_headers(trace: TraceWrapper) -> bool:
    names = set(DEFAULT_REDACT_HEADERS)
    http = trace.http_buffered_trace
    segment_pieces = trace.http_streamed_trace_segment
    found = [
        *http.request.headers,
        *http.request.trailers,
        *http.response.headers,
        *http.response.trailers,
        *segment_pieces.request_headers.headers,
        *segment_pieces.request_trailers.headers,
        *segment_pieces.response_headers.headers,
        *segment_pieces.response_trailers.headers,
    ]
    return any(header.key.lower() in names for header in found)


def length_delimited(data: bytes) -> Iterator[bytes]:
    """Split Envoy's PROTO_BINARY_LENGTH_DELIMITED: repeated [varint32 length][message]."""
    position = 0
    while position < len(data):
        length = shift = 0
        while True:
            byte = data[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        yield data[position : position + length]
        position += length
    assert position == len(data)


@pytest.mark.parametrize("relative", vector_params("buffered", ".pb"))
def test_real_buffered_trace_gets_the_name_its_manifest_implies(relative: str) -> None:
    entry = MANIFEST[relative]
    data = (VECTORS / relative).read_bytes()
    message = StreamTapsRequest(trace_id=envoy_id_of(entry))
    message.trace.ParseFromString(data)

    derivation = make_deriver().derive(message, INBOUND, 1)

    [planned] = derivation.files
    assert planned.sequence == 1
    assert_stem(planned.stem, entry["summary"], envoy_id_of(entry))
    if has_redactable_headers(TraceWrapper.FromString(data)):
        assert derivation.redactions > 0
    else:
        assert planned.payload == data


@pytest.mark.parametrize("relative", vector_params("streamed", ".pb_length_delimited"))
def test_real_streamed_segments_become_one_file_each_under_the_first_ones_stem(
    relative: str,
) -> None:
    entry = MANIFEST[relative]
    segments = list(length_delimited((VECTORS / relative).read_bytes()))
    deriver = make_deriver()

    planned = []
    for data in segments:
        message = StreamTapsRequest()
        message.trace.ParseFromString(data)
        files = deriver.derive(message, INBOUND, 7).files
        assert len(files) == 1
        planned.append(files[0])

    assert len(planned) == entry["summary"]["messages"] == len(segments)
    assert {file.stem for file in planned} == {planned[0].stem}
    assert [file.sequence for file in planned] == list(range(1, len(segments) + 1))
    assert_stem(planned[0].stem, entry["summary"], entry["summary"]["segment_trace_ids"][0])
    for file, data in zip(planned, segments, strict=True):
        if not has_redactable_headers(TraceWrapper.FromString(data)):
            assert file.payload == data
