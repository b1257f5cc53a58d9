"""Our generated ext_proc classes against ProcessingRequests a real Envoy sent (the committed
ext_proc vectors): each parses and serializes back to the same bytes, and what it carries
matches what the client and Envoy's tap filter saw of the same transaction."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import pytest
from google.protobuf import unknown_fields
from google.protobuf.message import Message

from tap_emulator._proto.envoy.data.tap.v3 import wrapper_pb2
from tap_emulator._proto.envoy.service.ext_proc.v3 import external_processor_pb2
from tests.helpers.extproc_vectors import ExtProcCase, length_delimited, load_all

ProcessingRequest = external_processor_pb2.ProcessingRequest
CASES = load_all()


def _id(case: ExtProcCase) -> str:
    return case.name


# --- wire-level canonical form --------------------------------------------------------------
# Protobuf leaves the order of map entries on the wire unspecified, and Envoy writes a Struct's
# keys in its own hash order. To compare bytes, both sides are put in one order: map entries
# sorted by key (what deterministic serialization does), everything else untouched.


@dataclass(frozen=True)
class Shape:
    """Which fields of a message hold messages worth descending into, and which are maps."""

    nested: dict[int, Shape] = field(default_factory=dict)
    maps: frozenset[int] = frozenset()


VALUE = Shape()
STRUCT = Shape(nested={1: Shape(nested={2: VALUE})}, maps=frozenset({1}))
VALUE.nested.update({5: STRUCT, 6: Shape(nested={1: VALUE})})  # struct_value, list_value
STRUCT_MAP_ENTRY = Shape(nested={2: STRUCT})
HEADERS = Shape(nested={2: STRUCT_MAP_ENTRY}, maps=frozenset({2}))  # deprecated attributes
METADATA = Shape(nested={1: STRUCT_MAP_ENTRY}, maps=frozenset({1, 2}))
REQUEST = Shape(
    nested={2: HEADERS, 3: HEADERS, 8: METADATA, 9: STRUCT_MAP_ENTRY}, maps=frozenset({9})
)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(number, the field's whole encoding, its payload when length-delimited) in wire order."""
    found, position = [], 0
    while position < len(data):
        start = position
        key, position = _varint(data, position)
        number, wire_type, payload = key >> 3, key & 7, b""
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            size, position = _varint(data, position)
            payload, position = data[position : position + size], position + size
        else:
            raise ValueError(f"wire type {wire_type} in field {number}")
        found.append((number, data[start:position], payload))
    return found


def canonical(data: bytes, shape: Shape) -> bytes:
    parts: list[bytes | int] = []
    entries: dict[int, list[tuple[bytes, bytes]]] = {}
    for number, whole, payload in _fields(data):
        if number in shape.nested:
            inner = canonical(payload, shape.nested[number])
            whole = _encode_varint(number << 3 | 2) + _encode_varint(len(inner)) + inner
        if number in shape.maps:
            if number not in entries:
                parts.append(number)  # the map's entries go where its first one was
            key = next((p for n, _, p in _fields(payload) if n == 1), b"")
            entries.setdefault(number, []).append((key, whole))
        else:
            parts.append(whole)
    return b"".join(
        b"".join(w for _, w in sorted(entries[p])) if isinstance(p, int) else p for p in parts
    )


# --- round trips ----------------------------------------------------------------------------


def _unknown_fields(message: Message, path: str = "") -> list[str]:
    """Fields our classes did not recognise, anywhere in the message (a misnumbered field
    would still round-trip, as unknown bytes)."""
    found = [path or "."] if len(unknown_fields.UnknownFieldSet(message)) else []
    for descriptor, value in message.ListFields():
        kind = descriptor.message_type
        if kind is None:
            continue
        if kind.GetOptions().map_entry:
            value_field = kind.fields_by_name["value"]
            items = list(value.values()) if value_field.message_type else []
        else:
            items = list(value) if descriptor.is_repeated else [value]
        for item in items:
            found += _unknown_fields(item, f"{path}.{descriptor.name}")
    return found


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_processing_request_envoy_sent_round_trips_byte_for_byte(case: ExtProcCase) -> None:
    for index, raw in enumerate(case.messages):
        request = ProcessingRequest.FromString(raw)
        assert _unknown_fields(request) == [], index
        if not request.attributes:  # no map on the wire: the bytes themselves must match
            assert request.SerializeToString() == raw, index
        assert request.SerializeToString(deterministic=True) == canonical(raw, REQUEST), index


def test_the_round_trip_covers_attribute_maps_and_every_message_kind() -> None:
    kinds: set[str] = set()
    multi_key_attributes = 0
    for case in CASES:
        for raw in case.messages:
            request = ProcessingRequest.FromString(raw)
            kinds.add(request.WhichOneof("request") or "")
            struct = request.attributes.get("envoy.filters.http.ext_proc")
            multi_key_attributes += struct is not None and len(struct.fields) > 1
    assert kinds == {
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
        "response_trailers",
    }
    assert multi_key_attributes >= 20


@pytest.mark.parametrize("case", [c for c in CASES if c.tap_path], ids=_id)
def test_the_tap_filters_trace_of_the_same_request_round_trips(case: ExtProcCase) -> None:
    raw = case.tap_trace()
    assert raw is not None
    trace = wrapper_pb2.TraceWrapper.FromString(raw)
    assert _unknown_fields(trace) == []
    assert trace.SerializeToString() == raw


# --- what the messages carry ----------------------------------------------------------------


def _parsed(case: ExtProcCase) -> list[ProcessingRequest]:
    return [ProcessingRequest.FromString(raw) for raw in case.messages]


def _body(case: ExtProcCase, part: str) -> bytes:
    return b"".join(getattr(r, part).body for r in _parsed(case) if r.WhichOneof("request") == part)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bodies_rebuilt_from_the_chunks_are_what_the_client_sent_and_got(
    case: ExtProcCase,
) -> None:
    sent, got = _body(case, "request_body"), _body(case, "response_body")
    assert (len(sent), hashlib.sha256(sent).hexdigest()) == (
        case.client.request_body_bytes,
        case.client.request_body_sha256,
    )
    assert (len(got), hashlib.sha256(got).hexdigest()) == (
        case.client.response_body_bytes,
        case.client.response_body_sha256,
    )


def test_header_values_arrive_in_raw_value_and_value_stays_empty() -> None:
    for case in CASES:
        for request in _parsed(case):
            part = request.WhichOneof("request") or ""
            if part.endswith("_body"):
                continue
            holder = getattr(request, part)
            header_map = holder.trailers if part.endswith("_trailers") else holder.headers
            assert header_map.headers, (case.name, part)
            for header in header_map.headers:
                assert header.value == "", (case.name, header.key)
        first = _parsed(case)[0]
        if first.WhichOneof("request") == "request_headers":
            path = {h.key: h.raw_value for h in first.request_headers.headers.headers}[":path"]
            assert path == case.client.path.encode(), case.name


def test_the_manifest_sequences_count_the_recorded_messages() -> None:
    for case in CASES:
        counts = [int(n or 1) for n in re.findall(r"\S+?(?:x(\d+))?(?:\s|$)", case.sequence)]
        assert sum(counts) == len(case.messages), case.name


def test_length_delimited_refuses_a_cut_short_message() -> None:
    with pytest.raises(ValueError, match="cut short"):
        length_delimited(b"\x05abc")
