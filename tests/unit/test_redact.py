"""Redaction: sensitive header values never reach the disk; everything else is untouched."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderValue
from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter
from tap_emulator.derive.deriver import Deriver, NamingPolicy
from tap_emulator.derive.naming import DEFAULT_TRACE_ID_HEADERS, Identity
from tap_emulator.derive.redact import DEFAULT_REDACT_HEADERS, REDACTED
from tap_emulator.labels import Direction

# --- helpers ----------------------------------------------------------------------------

DEFAULT = frozenset(DEFAULT_REDACT_HEADERS)
SEGMENT_HEADER_PIECES = [
    "request_headers",
    "request_trailers",
    "response_headers",
    "response_trailers",
]


def headers(*pairs: tuple[str, str]) -> list[HeaderValue]:
    return [HeaderValue(key=key, value=value) for key, value in pairs]


def buffered_trace(
    request_headers: Iterable[HeaderValue] = (),
    request_trailers: Iterable[HeaderValue] = (),
    response_headers: Iterable[HeaderValue] = (),
    response_trailers: Iterable[HeaderValue] = (),
) -> TraceWrapper:
    trace = TraceWrapper()
    http = trace.http_buffered_trace
    http.request.headers.extend(request_headers)
    http.request.trailers.extend(request_trailers)
    http.request.body.as_bytes = b"authorization: not a header"
    http.response.headers.extend(response_headers)
    http.response.trailers.extend(response_trailers)
    http.response.body.as_string = "cookie=body-is-not-redacted"
    return trace


def segment_trace(piece: str, piece_headers: Iterable[HeaderValue]) -> TraceWrapper:
    trace = TraceWrapper()
    segment = trace.http_streamed_trace_segment
    segment.trace_id = 42
    getattr(segment, piece).headers.extend(piece_headers)
    return trace


def values(found: Iterable[HeaderValue], key: str) -> list[str]:
    return [header.value for header in found if header.key == key]


def redact_trace(trace: TraceWrapper, names: frozenset[str]) -> int:
    """Redact `trace` in place as the server does: through `Deriver.derive` (the one path the
    server runs), reading back the bytes it would write. Returns the redactions it counted."""
    deriver = Deriver(
        NamingPolicy(trace_id_headers=DEFAULT_TRACE_ID_HEADERS, redact_headers=names),
        SequenceCounter(100, 60.0),
        SegmentNames(100, 60.0),
    )
    request = StreamTapsRequest(trace_id=7)
    request.trace.CopyFrom(trace)
    derivation = deriver.derive(request, Identity(Direction.INBOUND, True, None), 1)
    [written] = derivation.files
    trace.CopyFrom(TraceWrapper.FromString(written.payload))
    return derivation.redactions


# --- defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", DEFAULT_REDACT_HEADERS)
def test_default_header_value_is_replaced_in_buffered_request_headers(key: str) -> None:
    trace = buffered_trace(request_headers=headers((key, "secret")))

    redact_trace(trace, DEFAULT)

    assert values(trace.http_buffered_trace.request.headers, key) == [REDACTED]


def test_set_cookie_is_replaced_in_buffered_response_headers() -> None:
    trace = buffered_trace(response_headers=headers(("set-cookie", "sid=1; HttpOnly")))

    redact_trace(trace, DEFAULT)

    assert values(trace.http_buffered_trace.response.headers, "set-cookie") == [REDACTED]


def test_buffered_request_trailers_are_redacted() -> None:
    trace = buffered_trace(request_trailers=headers(("authorization", "Bearer t")))

    redact_trace(trace, DEFAULT)

    assert values(trace.http_buffered_trace.request.trailers, "authorization") == [REDACTED]


def test_buffered_response_trailers_are_redacted() -> None:
    trace = buffered_trace(response_trailers=headers(("set-cookie", "a=b")))

    redact_trace(trace, DEFAULT)

    assert values(trace.http_buffered_trace.response.trailers, "set-cookie") == [REDACTED]


@pytest.mark.parametrize("piece", SEGMENT_HEADER_PIECES)
def test_streamed_header_and_trailer_segments_are_redacted(piece: str) -> None:
    trace = segment_trace(piece, headers(("cookie", "a=b"), ("x-keep", "kept")))

    replaced = redact_trace(trace, DEFAULT)

    found = getattr(trace.http_streamed_trace_segment, piece).headers
    assert values(found, "cookie") == [REDACTED]
    assert values(found, "x-keep") == ["kept"]
    assert replaced == 1


@pytest.mark.parametrize("piece", ["request_body_chunk", "response_body_chunk"])
def test_body_segments_are_left_alone(piece: str) -> None:
    trace = TraceWrapper()
    getattr(trace.http_streamed_trace_segment, piece).as_bytes = b"authorization: Bearer t"
    before = trace.SerializeToString()

    assert redact_trace(trace, DEFAULT) == 0
    assert trace.SerializeToString() == before


def test_socket_trace_is_left_alone() -> None:
    trace = TraceWrapper()
    trace.socket_buffered_trace.trace_id = 5
    trace.socket_buffered_trace.events.add().read.data.as_bytes = b"Cookie: a=b\r\n"
    before = trace.SerializeToString()

    assert redact_trace(trace, DEFAULT) == 0
    assert trace.SerializeToString() == before


@pytest.mark.parametrize("key", ["Authorization", "COOKIE", "Set-Cookie", "pRoXy-AuThOrIzAtIoN"])
def test_header_keys_match_case_insensitively(key: str) -> None:
    trace = buffered_trace(request_headers=headers((key, "secret")))

    assert redact_trace(trace, DEFAULT) == 1
    assert values(trace.http_buffered_trace.request.headers, key) == [REDACTED]


def test_the_header_key_is_kept_as_sent() -> None:
    trace = buffered_trace(request_headers=headers(("Authorization", "secret")))

    redact_trace(trace, DEFAULT)

    assert [h.key for h in trace.http_buffered_trace.request.headers] == ["Authorization"]


def test_every_duplicate_of_a_header_is_redacted() -> None:
    trace = buffered_trace(
        request_headers=headers(("cookie", "a=1"), ("x", "y"), ("cookie", "b=2"))
    )

    replaced = redact_trace(trace, DEFAULT)

    assert values(trace.http_buffered_trace.request.headers, "cookie") == [REDACTED, REDACTED]
    assert replaced == 2


def test_raw_value_is_redacted_too() -> None:
    trace = buffered_trace(
        request_headers=[HeaderValue(key="authorization", raw_value=b"\xffsecret")]
    )

    replaced = redact_trace(trace, DEFAULT)

    [header] = trace.http_buffered_trace.request.headers
    assert header.raw_value == REDACTED.encode()
    assert header.value == ""
    assert replaced == 1


def test_redaction_returns_how_many_values_were_replaced() -> None:
    trace = buffered_trace(
        request_headers=headers(("authorization", "a"), ("cookie", "c")),
        request_trailers=headers(("proxy-authorization", "p")),
        response_headers=headers(("set-cookie", "s1"), ("set-cookie", "s2")),
        response_trailers=headers(("x-other", "o")),
    )

    assert redact_trace(trace, DEFAULT) == 5


def test_non_matching_headers_stay_byte_identical() -> None:
    keep = headers(("x-auth-hint", "authorization"), ("cookies", "plural"), (":authority", "h"))
    trace = buffered_trace(request_headers=[*keep, *headers(("cookie", "secret"))])
    before = [h.SerializeToString() for h in keep]

    redact_trace(trace, DEFAULT)

    after = [h.SerializeToString() for h in trace.http_buffered_trace.request.headers[:3]]
    assert after == before


def test_bodies_and_connections_are_not_touched() -> None:
    trace = buffered_trace(request_headers=headers(("cookie", "secret")))
    trace.http_buffered_trace.downstream_connection.local_address.socket_address.address = "1.2.3.4"
    expected = TraceWrapper()
    expected.CopyFrom(trace)
    expected.http_buffered_trace.request.headers[0].value = REDACTED

    redact_trace(trace, DEFAULT)

    assert trace == expected


def test_empty_list_redacts_nothing() -> None:
    trace = buffered_trace(
        request_headers=headers(("authorization", "a"), ("cookie", "c")),
        response_headers=headers(("set-cookie", "s")),
    )
    before = trace.SerializeToString()

    assert redact_trace(trace, frozenset()) == 0
    assert trace.SerializeToString() == before


def test_a_configured_list_replaces_the_default_one() -> None:
    trace = buffered_trace(request_headers=headers(("x-api-key", "k"), ("authorization", "a")))

    assert redact_trace(trace, frozenset({"x-api-key"})) == 1
    assert values(trace.http_buffered_trace.request.headers, "x-api-key") == [REDACTED]
    assert values(trace.http_buffered_trace.request.headers, "authorization") == ["a"]


def test_deriver_writes_the_redacted_payload_and_counts_it() -> None:
    deriver = Deriver(
        NamingPolicy(trace_id_headers=DEFAULT_TRACE_ID_HEADERS, redact_headers=DEFAULT),
        SequenceCounter(100, 60.0),
        SegmentNames(100, 60.0),
    )
    request = StreamTapsRequest(trace_id=7)
    request.trace.CopyFrom(
        buffered_trace(request_headers=headers(("authorization", "Bearer s3cr3t")))
    )

    derivation = deriver.derive(request, Identity(Direction.INBOUND, True, None), 1)

    [planned] = derivation.files
    assert b"s3cr3t" not in planned.payload
    written = TraceWrapper.FromString(planned.payload)
    assert values(written.http_buffered_trace.request.headers, "authorization") == [REDACTED]
    assert derivation.redactions == 1


# --- property ---------------------------------------------------------------------------

header_keys = st.one_of(
    st.sampled_from([*DEFAULT_REDACT_HEADERS, "x-api-key", "host", "cookies", "x-cookie"]),
    st.sampled_from(DEFAULT_REDACT_HEADERS).flatmap(
        lambda key: st.builds(
            lambda flips: "".join(
                c.upper() if flip else c for c, flip in zip(key, flips, strict=False)
            ),
            st.lists(st.booleans(), min_size=len(key), max_size=len(key)),
        )
    ),
    st.text(st.characters(codec="utf-8"), max_size=20),
)
header_values = st.builds(
    HeaderValue,
    key=header_keys,
    value=st.text(st.characters(codec="utf-8"), max_size=30),
    raw_value=st.binary(max_size=30),
)
header_lists = st.lists(header_values, max_size=6)


def expected_after(trace: TraceWrapper, names: frozenset[str]) -> tuple[TraceWrapper, int]:
    """The trace as it should be after redaction, built independently, and the count."""
    expected = TraceWrapper()
    expected.CopyFrom(trace)
    count = 0
    http = expected.http_buffered_trace
    for found in (
        http.request.headers,
        http.request.trailers,
        http.response.headers,
        http.response.trailers,
    ):
        for header in found:
            if header.key.lower() not in names:
                continue
            if header.value:
                header.value = REDACTED
                count += 1
            if header.raw_value:
                header.raw_value = REDACTED.encode()
                count += 1
    return expected, count


@settings(max_examples=300, deadline=None)
@given(
    request_headers=header_lists,
    request_trailers=header_lists,
    response_headers=header_lists,
    response_trailers=header_lists,
    names=st.sampled_from([DEFAULT, frozenset(), frozenset({"x-api-key", "cookie"})]),
)
def test_redaction_changes_exactly_the_matched_values(
    request_headers: list[HeaderValue],
    request_trailers: list[HeaderValue],
    response_headers: list[HeaderValue],
    response_trailers: list[HeaderValue],
    names: frozenset[str],
) -> None:
    trace = buffered_trace(request_headers, request_trailers, response_headers, response_trailers)
    expected, count = expected_after(trace, names)

    replaced = redact_trace(trace, names)

    assert trace == expected
    assert trace.SerializeToString() == expected.SerializeToString()
    assert replaced == count


@settings(max_examples=150, deadline=None)
@given(piece=st.sampled_from(SEGMENT_HEADER_PIECES), piece_headers=header_lists)
def test_segment_redaction_changes_exactly_the_matched_values(
    piece: str, piece_headers: list[HeaderValue]
) -> None:
    trace = segment_trace(piece, piece_headers)
    expected = TraceWrapper()
    expected.CopyFrom(trace)
    for header in getattr(expected.http_streamed_trace_segment, piece).headers:
        if header.key.lower() in DEFAULT:
            header.value = REDACTED if header.value else ""
            header.raw_value = REDACTED.encode() if header.raw_value else b""

    redact_trace(trace, DEFAULT)

    assert trace.SerializeToString() == expected.SerializeToString()
