"""Envoy's JSON traces become the same protobuf bytes Envoy writes in binary; JSON that is
not a trace is refused with a ValueError, never anything else; empty traces are told apart."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.captures.formats import split_length_delimited
from tap_emulator.tools.relay.convert import TraceConverter, is_empty, trace_from_json
from tests.helpers.fake_envoy_admin import admin_sample_objects
from tests.helpers.paths import VECTORS


def vector_pairs() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """(name, binary message, the same message as protobuf JSON) from the shared vectors."""
    for binary in sorted((VECTORS / "buffered").glob("*.pb")):
        [as_json] = json.loads(binary.with_name(binary.name + ".json").read_text())
        yield binary.name, binary.read_bytes(), as_json
    for binary in sorted((VECTORS / "streamed").glob("*.pb_length_delimited")):
        messages = json.loads(binary.with_name(binary.name + ".json").read_text())
        raw = split_length_delimited(binary.read_bytes())
        assert len(raw) == len(messages)
        for index, (one, as_json) in enumerate(zip(raw, messages, strict=True)):
            yield f"{binary.name}[{index}]", one, as_json


def test_json_traces_convert_to_the_bytes_envoy_wrote_in_binary(vectors: Path) -> None:
    compared = 0
    for name, binary, as_json in vector_pairs():
        pretty = json.dumps(as_json, indent=1).encode()  # as Envoy prints: pretty, proto names
        assert trace_from_json(pretty).SerializeToString() == binary, name
        compared += 1
    assert compared > 100


def test_body_as_string_and_as_bytes_differ_only_in_the_body_field() -> None:
    grpc_request_body = next(
        obj for obj in admin_sample_objects() if b"request_body_chunk" in obj and b"ping" in obj
    )
    as_string = trace_from_json(grpc_request_body)
    chunk = as_string.http_streamed_trace_segment.request_body_chunk
    assert chunk.WhichOneof("body_type") == "as_string"
    frame = b"\x00\x00\x00\x00\x06\n\x04ping"
    assert chunk.as_string.encode() == frame

    document = json.loads(grpc_request_body)
    body = document["http_streamed_trace_segment"]["request_body_chunk"]
    body["as_bytes"] = base64.b64encode(body.pop("as_string").encode()).decode()
    as_bytes = trace_from_json(json.dumps(document, indent=1).encode())
    assert as_bytes.http_streamed_trace_segment.request_body_chunk.as_bytes == frame
    as_bytes.http_streamed_trace_segment.request_body_chunk.as_string = frame.decode()
    assert as_bytes == as_string


def test_a_json_document_that_is_not_a_trace_is_refused() -> None:
    with pytest.raises(ValueError, match="http_buffered_trace"):
        trace_from_json(b'{"http_buffered_trace": 7}')


def test_json_nested_too_deeply_is_refused_as_not_a_trace() -> None:
    deep = b'{"http_buffered_trace": {"request": {"headers": ' + b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(ValueError):
        trace_from_json(deep + b"}}}")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    ["http_buffered_trace", "http_streamed_trace_segment", "request", "headers", "key", "x"]
)


@given(st.dictionaries(_FIELDS, st.dictionaries(_FIELDS, _JSON, max_size=3), max_size=2))
def test_any_json_object_converts_or_is_refused_with_a_value_error(document: Any) -> None:
    raw = json.dumps(document).encode()
    with contextlib.suppress(ValueError):
        TraceConverter().item(raw, b"")


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b"{ \n }",
        b'{"http_buffered_trace": {}}',
        b'{"http_buffered_trace": {"request": {"headers": [{}]}}}',
        b'{"http_streamed_trace_segment": {"trace_id": "7"}}',
        b'{"a_trace_from_a_future_envoy": {"x": 1}}',
    ],
)
def test_a_trace_with_nothing_in_it_is_empty(raw: bytes) -> None:
    assert TraceConverter().item(raw, b"") is None


def test_a_trace_with_anything_in_it_is_not_empty() -> None:
    for raw in admin_sample_objects():
        assert not is_empty(trace_from_json(raw))
    status_only = b'{"http_buffered_trace": {"response": {"headers": [{"key": ":status"}]}}}'
    assert TraceConverter().item(status_only, b"") is not None


def test_buffered_traces_are_numbered_and_segments_keep_their_own_id() -> None:
    converter = TraceConverter()
    buffered = b'{"http_buffered_trace": {"request": {"headers": [{"key": "a"}]}}}'
    segment = admin_sample_objects()[0]
    ids = [converter.item(raw, b"id").trace_id for raw in (buffered, segment, buffered)]  # type: ignore[union-attr]
    assert ids == [1, 4657072182323551182, 2]
