"""`show`'s structured view and its text: bodies as text, JSON, hex or gRPC messages (raw,
or decoded by a FileDescriptorSet), redaction and truncation in plain sight."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from tap_emulator.captures.detail import describe, hex_dump
from tap_emulator.captures.exchange import load_exchange
from tap_emulator.captures.protowire import ProtoDescriptors, RawField, decode_raw
from tap_emulator.captures.reader import read_transactions
from tap_emulator.captures.render import render_view, table_header, table_row
from tests.helpers.captures import buffered, request_headers


def view_of(path: Path, descriptors: ProtoDescriptors | None = None):  # type: ignore[no-untyped-def]
    [transaction] = list(read_transactions([path]))
    return describe(load_exchange(transaction), descriptors)


def health_descriptors(tmp_path: Path) -> ProtoDescriptors:
    file = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(file)
    path = tmp_path / "health.fds"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString())
    return ProtoDescriptors.from_file(path)


def test_a_json_body_is_pretty_printed_and_the_request_line_leads(vectors: Path) -> None:
    view = view_of(vectors / "buffered" / "h1_get_b3.pb")
    text = render_view(view)

    assert view.request.start_line == "GET /get"
    assert view.response.start_line == "200 OK"
    assert view.response.body.kind == "json"
    assert '\n  "path": "/get"\n' in text
    assert "> x-b3-traceid: a7020847b1ec89328e3f8d357f373266" in text
    assert "[body: json, 377 bytes captured]" in text


def test_grpc_messages_are_shown_raw_without_a_schema(vectors: Path) -> None:
    view = view_of(vectors / "buffered" / "grpc_health_check_notfound.pb")

    [message] = view.request.body.grpc_messages
    assert message.fields == (RawField(1, "bytes", text="no.such.Service"),)
    assert '  1: "no.such.Service"' in render_view(view)
    assert "< grpc-status: 5" in render_view(view)


def test_grpc_messages_are_decoded_by_the_method_their_path_names(
    vectors: Path, tmp_path: Path
) -> None:
    view = view_of(vectors / "buffered" / "grpc_health_check.pb", health_descriptors(tmp_path))

    [request] = view.request.body.grpc_messages
    [response] = view.response.body.grpc_messages
    assert request.type_name == "grpc.health.v1.HealthCheckRequest"
    assert response.type_name == "grpc.health.v1.HealthCheckResponse"
    assert response.json is not None and '"status": "SERVING"' in response.json


def test_a_cut_grpc_message_says_how_much_was_captured(vectors: Path) -> None:
    view = view_of(vectors / "buffered" / "grpc_unary_large.pb")

    [message] = view.request.body.grpc_messages
    assert message.captured_bytes == 1024 - 5 < message.declared_bytes
    assert message.note is not None and message.note.startswith("cut short")
    assert view.request.body.truncated


def test_truncation_is_noted_with_the_announced_length(vectors: Path) -> None:
    view = view_of(vectors / "buffered" / "h1_post_large_b3.pb")

    assert any("1024 bytes captured of 5000" in note for note in view.notes)
    assert "TRUNCATED by the proxy" in render_view(view)


def test_a_rejected_request_shows_as_not_recorded(vectors: Path) -> None:
    view = view_of(vectors / "streamed" / "odd_authority_space.pb_length_delimited")

    assert not view.request.recorded
    assert "> (request not recorded)" in render_view(view)
    assert any("recorded no request" in note for note in view.notes)


def test_binary_bodies_are_a_hex_dump_and_redacted_values_say_so(tmp_path: Path) -> None:
    headers = [*request_headers(), ("authorization", "REDACTED")]
    response = [(":status", "200"), ("content-type", "application/octet-stream")]
    path = tmp_path / "svc-abc-1.pb"
    path.write_bytes(buffered(headers, response, response_body=bytes(range(20))))
    view = view_of(path)
    text = render_view(view)

    assert view.response.body.kind == "binary"
    assert view.response.body.hex_lines == hex_dump(bytes(range(20)))
    assert "00000010  10 11 12 13" in text
    assert "> authorization: REDACTED (value removed by the emulator)" in text
    assert view.summary["redacted_headers"] == ["authorization"]


def test_the_structured_view_is_json_ready(vectors: Path) -> None:
    import json

    view = view_of(vectors / "streamed" / "grpc_bidi.pb_length_delimited")
    shown = json.loads(json.dumps(view.to_dict()))

    assert shown["response"]["body"]["kind"] == "grpc"
    assert len(shown["response"]["body"]["grpc_messages"]) == 3
    assert shown["summary"]["grpc_status"] == 0


def test_decode_raw_reads_nested_messages_and_refuses_garbage() -> None:
    nested = b"\x0a\x03\x08\x96\x01"  # field 1 { field 1: 150 }

    assert decode_raw(nested) == (
        RawField(1, "bytes", fields=(RawField(1, "varint", number_value=150),)),
    )
    assert decode_raw(b"\x0a\x05ab") is None


def test_a_table_row_fits_its_columns(vectors: Path) -> None:
    [transaction] = list(read_transactions([vectors / "buffered" / "h1_post_large_b3.pb"]))
    row = table_row(transaction)

    assert row.startswith("2026-11-24 16:51:")
    assert " POST " in row and " 1024+ " in row
    assert len(table_header().split()) == 14  # "TIME (UTC)" is two words
