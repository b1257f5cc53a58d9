"""Naming: what a trace is called on disk (design.md, Names).

Names are checked end to end through the Deriver (wire message + stream identity -> file
name), and the pure rules of `tap_emulator.derive.naming` are checked where they decide alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderValue
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter
from tap_emulator.derive.deriver import Deriver, NamingPolicy
from tap_emulator.derive.naming import (
    DEFAULT_TRACE_ID_HEADERS,
    Identity,
    NameFormat,
    ascii_lower,
    direction_from_tap_id,
    namespace_from_node,
    parse_trace_id,
)
from tap_emulator.ingest.tapsink import identity_of
from tap_emulator.labels import Direction
from tap_emulator.layout import file_name, parse_file_name

# --- helpers ----------------------------------------------------------------------------

OUT = "/srv/taps"
SAFE_NAME = re.compile(r"[A-Za-z0-9._:-]+")
B3 = "a7020847b1ec89328e3f8d357f373266"
SEED_AUTHORITY = "httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080"
SEED_NAMESPACE = "sleep-2-59564"
ENVOY_ID = 0xABCDEF0123
ENVOY_HEX = "abcdef0123"
ISTIO_NODE_ID = f"sidecar~10.0.0.7~sleep-7d4f.{SEED_NAMESPACE}~{SEED_NAMESPACE}.svc.cluster.local"


def istio_first_message(
    tap_id: str,
    *,
    metadata_namespace: str | None = SEED_NAMESPACE,
    node_id: str = ISTIO_NODE_ID,
    cluster: str = f"sleep.{SEED_NAMESPACE}",
) -> StreamTapsRequest:
    """A stream's first message as an Istio sidecar's tap sink sends it."""
    request = StreamTapsRequest()
    request.identifier.tap_id = tap_id
    node = request.identifier.node
    node.id = node_id
    node.cluster = cluster
    if metadata_namespace is not None:
        node.metadata.fields["NAMESPACE"].string_value = metadata_namespace
    return request


def identity_for(
    tap_id: str,
    *,
    metadata_namespace: str | None = SEED_NAMESPACE,
    node_id: str = ISTIO_NODE_ID,
    cluster: str = f"sleep.{SEED_NAMESPACE}",
) -> Identity:
    """The identity the server derives from such a first message (default direction inbound)."""
    message = istio_first_message(
        tap_id, metadata_namespace=metadata_namespace, node_id=node_id, cluster=cluster
    )
    return identity_of(message, Direction.INBOUND)


INBOUND = identity_for("pi2-filter-inbound")
OUTBOUND = identity_for("pi2-filter-outbound")


def headers(*pairs: tuple[str, str]) -> list[HeaderValue]:
    return [HeaderValue(key=key, value=value) for key, value in pairs]


def buffered(request_headers: Sequence[HeaderValue], envoy_id: int = ENVOY_ID) -> StreamTapsRequest:
    message = StreamTapsRequest(trace_id=envoy_id)
    message.trace.http_buffered_trace.request.headers.extend(request_headers)
    message.trace.http_buffered_trace.response.headers.extend(headers((":status", "200")))
    return message


def make_deriver(
    trace_id_headers: tuple[str, ...] = DEFAULT_TRACE_ID_HEADERS,
    name_format: NameFormat = NameFormat.PLAIN,
) -> Deriver:
    policy = NamingPolicy(name_format=name_format, trace_id_headers=trace_id_headers)
    return Deriver(
        policy,
        SequenceCounter(max_entries=10_000, idle_seconds=3600.0),
        SegmentNames(max_entries=10_000, idle_seconds=3600.0),
    )


def names_of(deriver: Deriver, message: StreamTapsRequest, identity: Identity) -> list[str]:
    return [f"{f.stem}-{f.sequence}.pb" for f in deriver.derive(message, identity, 1).files]


def name_of(
    request_headers: Sequence[HeaderValue],
    identity: Identity = INBOUND,
    trace_id_headers: tuple[str, ...] = DEFAULT_TRACE_ID_HEADERS,
    envoy_id: int = ENVOY_ID,
) -> str:
    """The one file name a fresh emulator gives a buffered trace with these request headers."""
    [name] = names_of(make_deriver(trace_id_headers), buffered(request_headers, envoy_id), identity)
    return name


def trace_id_of(
    request_headers: Sequence[HeaderValue],
    trace_id_headers: tuple[str, ...] = DEFAULT_TRACE_ID_HEADERS,
    envoy_id: int = ENVOY_ID,
) -> str:
    """The trace id part of the name an inbound trace to `e.com` with these headers gets."""
    name = name_of(
        [*headers((":authority", "e.com")), *request_headers], INBOUND, trace_id_headers, envoy_id
    )
    assert name.startswith("e.com-"), name
    assert name.endswith("-1.pb"), name
    return name.removeprefix("e.com-").removesuffix("-1.pb")


def assert_safe(name: str) -> None:
    assert SAFE_NAME.fullmatch(name), name
    assert not name.startswith((".", "-")), name
    assert len(name.encode()) <= 255, name
    assert name.endswith(".pb"), name
    assert "\x00" not in name, name
    assert "/" not in name, name
    assert os.path.dirname(os.path.join(OUT, name)) == OUT, name  # noqa: PTH118, PTH120


# --- the user guide's examples ----------------------------------------------------------------


def test_seed_inbound_example_name_is_exact() -> None:
    inbound = identity_for(
        "pi2-filter-inbound",
        metadata_namespace="httpbin-go-httpbin-1-56058",
        node_id="sidecar~10.0.0.9~httpbin-5f7c.httpbin-go-httpbin-1-56058~"
        "httpbin-go-httpbin-1-56058.svc.cluster.local",
    )
    message = buffered(headers((":authority", SEED_AUTHORITY), ("x-b3-traceid", B3)))

    assert names_of(make_deriver(), message, inbound) == [
        "httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080-a7020847b1ec89328e3f8d357f373266-1.pb"
    ]


def test_seed_outbound_example_name_is_exact() -> None:
    message = buffered(headers((":authority", "httpbin-go-httpbin:8000"), ("x-b3-traceid", B3)))

    assert names_of(make_deriver(), message, OUTBOUND) == [
        "sleep-2-59564-a7020847b1ec89328e3f8d357f373266-1.pb"
    ]


def test_second_transaction_on_same_trace_gets_sequence_2() -> None:
    deriver = make_deriver()
    message = buffered(headers((":authority", SEED_AUTHORITY), ("x-b3-traceid", B3)))

    first = names_of(deriver, message, INBOUND)
    second = names_of(deriver, message, INBOUND)

    assert first == [f"{SEED_AUTHORITY}-{B3}-1.pb"]
    assert second == [f"{SEED_AUTHORITY}-{B3}-2.pb"]


def test_file_name_joins_stem_sequence_and_suffix() -> None:
    assert file_name("example.com-abc", 7) == "example.com-abc-7.pb"


def test_a_published_name_parses_back_and_other_names_do_not() -> None:
    assert parse_file_name("example.com:8080-abc-req-12.pb") == ("example.com:8080-abc-req", 12)
    assert parse_file_name(".tap-emulator-tmp-x-1-aa") is None
    assert parse_file_name("notes.txt") is None
    assert parse_file_name("-1.pb") is None


# --- direction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tap_id", "expected"),
    [
        ("f5-tap-inbound", Direction.INBOUND),
        ("x.outbound", Direction.OUTBOUND),
        ("a_b~OUTBOUND", Direction.OUTBOUND),
        ("pi2~INBOUND", Direction.INBOUND),
        ("inbound", Direction.INBOUND),
        ("inboundx", None),
        ("outbound-tap", None),
        ("tap-emulator", None),
        ("", None),
    ],
)
def test_direction_is_the_last_token_of_tap_id(tap_id: str, expected: Direction | None) -> None:
    assert direction_from_tap_id(tap_id) is expected


def test_unknown_direction_takes_the_configured_default_and_is_marked_unknown() -> None:
    message = istio_first_message("tap-emulator")

    sender = identity_of(message, Direction.OUTBOUND)

    assert sender.direction is Direction.OUTBOUND
    assert sender.direction_known is False


def test_known_direction_is_marked_known() -> None:
    assert INBOUND.direction is Direction.INBOUND
    assert INBOUND.direction_known
    assert OUTBOUND.direction is Direction.OUTBOUND
    assert OUTBOUND.direction_known


# --- client namespace -------------------------------------------------------------------


def test_namespace_comes_from_node_metadata_first() -> None:
    sender = identity_for(
        "t-outbound",
        metadata_namespace="from-metadata",
        node_id="sidecar~10.0.0.7~sleep-7d4f.from-node~from-node.svc.cluster.local",
        cluster="sleep.from-cluster",
    )

    assert sender.client_namespace == "from-metadata"


def test_namespace_falls_back_to_istio_node_id_fourth_field_first_label() -> None:
    sender = identity_for(
        "t-outbound",
        metadata_namespace=None,
        node_id="sidecar~10.0.0.7~sleep-7d4f.sleep-2-59564~sleep-2-59564.svc.cluster.local",
        cluster="sleep.from-cluster",
    )

    assert sender.client_namespace == "sleep-2-59564"


def test_empty_metadata_namespace_falls_back_to_node_id() -> None:
    assert namespace_from_node("sidecar~1.2.3.4~p.ns1~ns1.svc.cluster.local", "", "") == "ns1"


def test_non_string_metadata_namespace_is_ignored() -> None:
    message = istio_first_message("t-outbound", metadata_namespace=None)
    message.identifier.node.metadata.fields["NAMESPACE"].number_value = 7

    assert identity_of(message, Direction.INBOUND).client_namespace == SEED_NAMESPACE


def test_namespace_falls_back_to_cluster_after_its_last_dot() -> None:
    sender = identity_for(
        "t-outbound", metadata_namespace=None, node_id="router~not-istio", cluster="app.team.ns-3"
    )

    assert sender.client_namespace == "ns-3"


def test_unknown_namespace_gets_the_placeholder_prefix() -> None:
    sender = identity_for("t-outbound", metadata_namespace=None, node_id="", cluster="nodots")

    assert sender.client_namespace is None
    assert name_of(headers(("x-b3-traceid", B3)), sender) == f"unknown-namespace-{B3}-1.pb"


def test_outbound_name_ignores_the_authority() -> None:
    name = name_of(headers((":authority", "other.example"), ("x-b3-traceid", B3)), OUTBOUND)

    assert name == f"{SEED_NAMESPACE}-{B3}-1.pb"


# --- authority --------------------------------------------------------------------------


def test_inbound_prefix_is_the_authority_header() -> None:
    name = name_of(headers((":authority", "api.example:8080"), ("host", "ignored.example")))

    assert name.startswith("api.example:8080-")


def test_host_header_is_used_when_authority_is_missing() -> None:
    assert name_of(headers(("host", "fallback.example"))).startswith("fallback.example-")


def test_host_header_is_used_when_authority_is_empty() -> None:
    assert name_of(headers((":authority", ""), ("host", "h.example"))).startswith("h.example-")


def test_authority_header_key_is_case_insensitive() -> None:
    assert name_of(headers((":Authority", "k.example"))).startswith("k.example-")


def test_missing_authority_gets_the_placeholder() -> None:
    assert name_of(headers(("x-b3-traceid", B3))) == f"no-authority-{B3}-1.pb"


def test_empty_authority_gets_the_placeholder() -> None:
    assert name_of(headers((":authority", ""), ("x-b3-traceid", B3))) == f"no-authority-{B3}-1.pb"


def test_authority_is_lowercased() -> None:
    name = name_of(headers((":authority", "MiXeD.Case.Example:8080"), ("x-b3-traceid", B3)))

    assert name == f"mixed.case.example:8080-{B3}-1.pb"


def test_kelvin_sign_is_not_folded_into_k() -> None:
    kelvin = name_of(headers((":authority", "\u212a.example"), ("x-b3-traceid", B3)))
    ascii_k = name_of(headers((":authority", "k.example"), ("x-b3-traceid", B3)))

    assert ascii_k == f"k.example-{B3}-1.pb"
    assert kelvin != ascii_k
    assert ascii_lower("\u212a") == "\u212a"


def test_authority_from_raw_value_is_used_when_value_is_empty() -> None:
    name = name_of([HeaderValue(key=":authority", raw_value=b"Raw.Example")])

    assert name.startswith("raw.example-")


# --- trace id ---------------------------------------------------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
B3_SINGLE = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"


def test_x_b3_traceid_of_32_hex_is_the_trace_id() -> None:
    assert trace_id_of(headers(("x-b3-traceid", B3))) == B3


def test_x_b3_traceid_of_16_hex_is_the_trace_id() -> None:
    assert trace_id_of(headers(("x-b3-traceid", "463ac35c9f6413ad"))) == "463ac35c9f6413ad"


def test_trace_id_hex_is_lowercased() -> None:
    assert trace_id_of(headers(("x-b3-traceid", B3.upper()))) == B3


def test_trace_id_header_key_is_case_insensitive() -> None:
    assert trace_id_of(headers(("X-B3-TraceId", B3))) == B3


def test_x_b3_traceid_wins_over_every_other_source() -> None:
    request_headers = headers(
        ("x-request-id", "rid"),
        ("x-trace-id", "tid"),
        ("traceparent", TRACEPARENT),
        ("b3", B3_SINGLE),
        ("x-b3-traceid", B3),
    )

    assert trace_id_of(request_headers) == B3


@pytest.mark.parametrize(
    "malformed", ["", "xyz", "a7020847b1ec893", B3[:-1], B3 + "0", "0x" + B3, B3[:-1] + "g"]
)
def test_malformed_x_b3_traceid_is_skipped_to_b3(malformed: str) -> None:
    request_headers = headers(("x-b3-traceid", malformed), ("b3", B3_SINGLE))

    assert trace_id_of(request_headers) == "80f198ee56343ba864fe8b2a57d3eff7"


def test_b3_single_header_gives_its_first_field() -> None:
    value = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"

    assert trace_id_of(headers(("b3", value))) == "80f198ee56343ba864fe8b2a57d3eff7"


@pytest.mark.parametrize("malformed", ["1", "0", "d", "", "xyz-e457b5a2e4d86bd1-1"])
def test_malformed_b3_is_skipped_to_traceparent(malformed: str) -> None:
    request_headers = headers(("b3", malformed), ("traceparent", TRACEPARENT))

    assert trace_id_of(request_headers) == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_b3_wins_over_traceparent() -> None:
    request_headers = headers(
        ("traceparent", TRACEPARENT), ("b3", "463ac35c9f6413ad-0020000000000001-1")
    )

    assert trace_id_of(request_headers) == "463ac35c9f6413ad"


def test_traceparent_gives_its_trace_id_field() -> None:
    assert trace_id_of(headers(("traceparent", TRACEPARENT))) == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_traceparent_of_a_future_version_may_carry_more_fields() -> None:
    value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"

    assert parse_trace_id("traceparent", value) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "malformed",
    [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has 4 fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # 31 hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # short parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # 1-digit version
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        "",
    ],
)
def test_malformed_traceparent_is_skipped_to_x_trace_id(malformed: str) -> None:
    request_headers = headers(("traceparent", malformed), ("x-trace-id", "custom-trace-0001"))

    assert trace_id_of(request_headers) == "custom-trace-0001"


def test_x_trace_id_wins_over_x_request_id() -> None:
    request_headers = headers(
        ("x-request-id", "client-rid-0001"), ("x-trace-id", "custom-trace-0001")
    )

    assert trace_id_of(request_headers) == "custom-trace-0001"


@pytest.mark.parametrize("malformed", ["", "has space", "a/b", "x" * 129, "caf\u00e9", "a%2Fb"])
def test_malformed_x_trace_id_is_skipped_to_x_request_id(malformed: str) -> None:
    request_headers = headers(("x-trace-id", malformed), ("x-request-id", "client-rid-0001"))

    assert trace_id_of(request_headers) == "client-rid-0001"


def test_x_request_id_of_128_token_characters_is_accepted() -> None:
    value = "A" * 126 + "._"

    assert parse_trace_id("x-request-id", value) == value


def test_x_request_id_uuid_is_lowercased() -> None:
    request_headers = headers(("x-request-id", "C4C2CBC8-A87D-4B08-909C-C115BEA4D25F"))

    assert trace_id_of(request_headers) == "c4c2cbc8-a87d-4b08-909c-c115bea4d25f"


def test_x_request_id_that_is_not_hex_keeps_its_case() -> None:
    assert trace_id_of(headers(("x-request-id", "Client-RID-1"))) == "Client-RID-1"


@pytest.mark.parametrize("malformed", ["", "a b", "../etc", "x" * 129, "\x00"])
def test_malformed_x_request_id_falls_back_to_envoy_id_hex(malformed: str) -> None:
    assert trace_id_of(headers(("x-request-id", malformed))) == ENVOY_HEX


def test_no_trace_header_falls_back_to_envoy_id_as_lowercase_hex() -> None:
    name = name_of(headers((":authority", "example.com")), envoy_id=0xDEADBEEF)

    assert name == "example.com-deadbeef-1.pb"


def test_configured_trace_id_header_order_is_respected() -> None:
    request_headers = headers(("x-b3-traceid", B3), ("x-request-id", "client-rid-0001"))

    trace_id = trace_id_of(request_headers, trace_id_headers=("x-request-id", "x-b3-traceid"))

    assert trace_id == "client-rid-0001"


def test_header_not_in_configured_list_is_not_a_trace_id_source() -> None:
    request_headers = headers(("x-request-id", "client-rid-0001"))

    assert trace_id_of(request_headers, trace_id_headers=("x-b3-traceid",)) == ENVOY_HEX


def test_empty_trace_id_list_always_uses_envoy_id() -> None:
    assert trace_id_of(headers(("x-b3-traceid", B3)), trace_id_headers=()) == ENVOY_HEX


# --- safety: table ----------------------------------------------------------------------

HOSTILE_AUTHORITIES = [
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "%2F..%2F",
    "a/b",
    "a\x00b",
    "\x00",
    "\u202egnp.exe",
    "\ufb01",
    "-rf",
    ".hidden",
    "CON",
    "a\\b",
    "a b\r\n",
    "x" * 300,
    "y" * 1000,
    "z" * 70_000,
    "\U0001f600" * 200,
    "é" * 300,
]


@pytest.mark.parametrize("authority", HOSTILE_AUTHORITIES, ids=lambda a: repr(a[:24]))
def test_hostile_authority_gives_a_safe_name(authority: str) -> None:
    assert_safe(name_of(headers((":authority", authority), ("x-b3-traceid", B3))))


@pytest.mark.parametrize("namespace", HOSTILE_AUTHORITIES, ids=lambda a: repr(a[:24]))
def test_hostile_namespace_gives_a_safe_name(namespace: str) -> None:
    sender = identity_for("t-outbound", metadata_namespace=namespace)

    assert_safe(name_of(headers(("x-b3-traceid", B3)), sender))


@pytest.mark.parametrize("authority", ["..", ".", ".hidden", "-rf", "--", "-"])
def test_name_never_starts_with_dot_or_dash(authority: str) -> None:
    name = name_of(headers((":authority", authority)))

    assert not name.startswith((".", "-"))
    assert name not in (".", "..")


def test_traversal_authority_stays_one_component() -> None:
    name = name_of(headers((":authority", "../../etc/passwd")))

    assert "/" not in name
    assert os.path.dirname(os.path.join(OUT, name)) == OUT  # noqa: PTH118, PTH120


def test_percent_is_not_kept_in_names() -> None:
    assert "%" not in name_of(headers((":authority", "%2F..%2F")))


@pytest.mark.parametrize("length", [300, 1000, 70_000])
def test_long_authority_is_cut_to_fit(length: int) -> None:
    name = name_of(headers((":authority", "a" * length), ("x-b3-traceid", B3)))

    assert_safe(name)
    assert name.startswith("a" * 64)
    assert name.endswith(f"-{B3}-1.pb")


def test_long_authorities_sharing_a_200_char_beginning_get_different_stems() -> None:
    common = "p" * 200
    first = name_of(headers((":authority", common + "-one.example"), ("x-b3-traceid", B3)))
    second = name_of(headers((":authority", common + "-two.example"), ("x-b3-traceid", B3)))

    assert first != second


def test_long_namespaces_sharing_a_beginning_get_different_stems() -> None:
    first = identity_for("t-outbound", metadata_namespace="n" * 300 + "1")
    second = identity_for("t-outbound", metadata_namespace="n" * 300 + "2")

    assert name_of(headers(), first) != name_of(headers(), second)


def test_long_trace_ids_sharing_a_beginning_get_different_stems() -> None:
    first = name_of(headers((":authority", "e.com"), ("x-request-id", "r" * 127 + "1")))
    second = name_of(headers((":authority", "e.com"), ("x-request-id", "r" * 127 + "2")))

    assert_safe(first)
    assert first != second


def test_longest_components_leave_room_for_a_20_digit_sequence() -> None:
    deriver = make_deriver(name_format=NameFormat.REQ_RES)
    message = buffered(headers((":authority", "a" * 1000), ("x-request-id", "r" * 128)))

    for planned in deriver.derive(message, INBOUND, 1).files:
        assert len(f"{planned.stem}-{10**20 - 1}.pb".encode()) <= 255


def test_authorities_differing_only_in_ascii_case_share_a_stem() -> None:
    deriver = make_deriver()
    upper = names_of(
        deriver, buffered(headers((":authority", "EXAMPLE.com"), ("x-b3-traceid", B3))), INBOUND
    )
    lower = names_of(
        deriver, buffered(headers((":authority", "example.com"), ("x-b3-traceid", B3))), INBOUND
    )

    assert upper == [f"example.com-{B3}-1.pb"]
    assert lower == [f"example.com-{B3}-2.pb"]


def test_inputs_that_sanitise_alike_share_a_stem_but_get_distinct_sequences() -> None:
    deriver = make_deriver()
    slash = names_of(
        deriver, buffered(headers((":authority", "a/b"), ("x-b3-traceid", B3))), INBOUND
    )
    underscore = names_of(
        deriver, buffered(headers((":authority", "a_b"), ("x-b3-traceid", B3))), INBOUND
    )

    assert slash == [f"a_b-{B3}-1.pb"]
    assert underscore == [f"a_b-{B3}-2.pb"]


def test_ligature_and_its_letters_get_different_names() -> None:
    ligature = name_of(headers((":authority", "\ufb01.example"), ("x-b3-traceid", B3)))
    letters = name_of(headers((":authority", "fi.example"), ("x-b3-traceid", B3)))

    assert letters == f"fi.example-{B3}-1.pb"
    assert ligature != letters


def test_bidi_override_does_not_reach_the_name() -> None:
    name = name_of(headers((":authority", "evil\u202egnp.pb"), ("x-b3-traceid", B3)))

    assert "\u202e" not in name
    assert_safe(name)


# --- safety: properties -----------------------------------------------------------------

# Protobuf string fields reject lone surrogates; everything else is fair game.
any_text = st.text(st.characters(codec="utf-8"), max_size=400)
long_text = st.one_of(any_text, st.text(st.characters(codec="utf-8"), min_size=250, max_size=2000))
trace_header = st.sampled_from(["x-b3-traceid", "b3", "traceparent", "x-trace-id", "x-request-id"])


@settings(max_examples=1000, deadline=None)
@given(
    authority=long_text,
    raw_authority=st.binary(max_size=600),
    namespace=long_text,
    node_id=any_text,
    cluster=any_text,
    tap_id=any_text,
    trace_values=st.lists(st.tuples(trace_header, long_text), max_size=5),
    envoy_id=st.integers(min_value=0, max_value=2**64 - 1),
    name_format=st.sampled_from(list(NameFormat)),
)
def test_every_name_is_safe_and_inside_the_output_dir(
    authority: str,
    raw_authority: bytes,
    namespace: str,
    node_id: str,
    cluster: str,
    tap_id: str,
    trace_values: list[tuple[str, str]],
    envoy_id: int,
    name_format: NameFormat,
) -> None:
    deriver = make_deriver(name_format=name_format)
    request_headers = [
        HeaderValue(key=":authority", value=authority),
        HeaderValue(key="host", raw_value=raw_authority),
        *headers(*trace_values),
    ]
    message = buffered(request_headers, envoy_id)
    for direction in ("inbound", "outbound", tap_id):
        sender = identity_of(
            istio_first_message(
                f"{tap_id}-{direction}",
                metadata_namespace=namespace,
                node_id=node_id,
                cluster=cluster,
            ),
            Direction.INBOUND,
        )
        for name in names_of(deriver, message, sender):
            assert_safe(name)
            assert len(name.encode()) + 19 <= 255  # room left for a 20-digit sequence


@settings(max_examples=200, deadline=None)
@given(node_id=any_text, cluster=any_text)
def test_namespace_from_any_node_is_safe_in_a_name(node_id: str, cluster: str) -> None:
    sender = identity_for("t-outbound", metadata_namespace=None, node_id=node_id, cluster=cluster)

    assert_safe(name_of(headers(), sender))


# A small alphabet makes inputs that sanitise alike (`a/b`, `a_b`, `A_b`) common.
clashing_text = st.one_of(
    st.text(st.sampled_from("aA/_.-\u212ak%\x00"), max_size=6),
    st.builds(
        lambda n, tail: "a" * n + tail, st.integers(110, 300), st.sampled_from(["", "b", "/"])
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    inputs=st.lists(st.tuples(clashing_text, clashing_text), min_size=1, max_size=30),
    name_format=st.sampled_from(list(NameFormat)),
)
def test_distinct_inputs_stay_distinct_files(
    inputs: list[tuple[str, str]], name_format: NameFormat
) -> None:
    deriver = make_deriver(name_format=name_format)
    produced: list[str] = []
    for authority, request_id in inputs:
        message = buffered(headers((":authority", authority), ("x-request-id", request_id)))
        produced.extend(names_of(deriver, message, INBOUND))

    assert len(produced) == len(set(produced))
    assert len(produced) == len(inputs) * (2 if name_format is NameFormat.REQ_RES else 1)
