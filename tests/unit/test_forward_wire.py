"""What the forwarder writes: StreamTapsRequests that protobuf reads back as it wrote them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.forward.wire import FRAMING_BYTES, encode_request, identifier_field


@dataclass(frozen=True)
class Who:
    node_id: str = ""
    cluster: str = ""
    namespace: str | None = None
    tap_id: str = ""


SIDECAR = Who(
    "sidecar~10.0.0.7~sleep-7d4f.sleep-2-59564~sleep-2-59564.svc.cluster.local",
    "sleep.sleep-2-59564",
    "sleep-2-59564",
    "f5-tap-test-outbound",
)


def a_trace(path: str = "/get") -> bytes:
    trace = TraceWrapper()
    headers = trace.http_buffered_trace.request.headers
    headers.add(key=":authority", value="httpbin.demo:8000")
    headers.add(key=":path", value=path)
    return trace.SerializeToString()


def test_the_first_message_is_what_protobuf_serializes_for_the_same_fields() -> None:
    payload = a_trace()
    expected = StreamTapsRequest(trace_id=2**63 + 5, trace=TraceWrapper.FromString(payload))
    expected.identifier.node.id = SIDECAR.node_id
    expected.identifier.node.cluster = SIDECAR.cluster
    expected.identifier.node.metadata.fields["NAMESPACE"].string_value = "sleep-2-59564"
    expected.identifier.tap_id = SIDECAR.tap_id

    encoded = encode_request(payload, 2**63 + 5, identifier_field(SIDECAR))

    assert encoded == expected.SerializeToString(deterministic=True)


def test_later_messages_carry_the_trace_bytes_untouched_and_no_identifier() -> None:
    payload = a_trace("/two") + b"\x98\x06\x01"  # an unknown field survives: nothing re-parsed
    decoded = StreamTapsRequest.FromString(encode_request(payload, 7))
    assert not decoded.HasField("identifier")
    assert decoded.trace_id == 7
    assert encode_request(payload, 7).endswith(payload)


def test_a_trace_id_of_zero_is_left_out_as_protobuf_does() -> None:
    payload = a_trace()
    assert (
        encode_request(payload, 0)
        == StreamTapsRequest(trace=TraceWrapper.FromString(payload)).SerializeToString()
    )


def test_a_sender_known_by_nothing_sends_no_identifier() -> None:
    assert identifier_field(Who()) == b""


@pytest.mark.parametrize(
    "sender",
    [Who(tap_id="ext-proc-inbound"), Who(node_id="n"), Who(namespace="")],
)
def test_a_partly_known_sender_sends_what_is_known(sender: Who) -> None:
    decoded = StreamTapsRequest.FromString(identifier_field(sender))
    assert decoded.HasField("identifier")
    assert decoded.identifier.tap_id == sender.tap_id
    assert decoded.identifier.node.id == sender.node_id
    if sender.namespace is None:
        assert "NAMESPACE" not in decoded.identifier.node.metadata.fields
    else:
        assert decoded.identifier.node.metadata.fields["NAMESPACE"].string_value == ""


def test_the_framing_allowance_covers_the_largest_ids_and_lengths() -> None:
    payload = b"\x00" * 300
    framed = encode_request(payload, 2**64 - 1)
    assert len(framed) - len(payload) <= FRAMING_BYTES
