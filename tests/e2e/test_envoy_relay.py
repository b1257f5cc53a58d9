"""A real Envoy 1.40 taps HTTP/1.1, HTTP/2 (h2c) and gRPC traffic; `tap-emulator relay`
forwards its admin /tap stream to a real emulator; the files are named as the user guide expects
and hold what the clients sent and received.

Per module: one Envoy (tap filter with admin_config before the router, --concurrency 1) and
the sample backends (tests/helpers/backends.py). Per test: an emulator and a relay. Envoy
allows one admin /tap stream at a time, so every test detaches its relay before the next.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tap_emulator._proto.envoy.data.tap.v3.http_pb2 import (
    HttpBufferedTrace,
    HttpStreamedTraceSegment,
)
from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tests.helpers.harness import NAMESPACE, Envoy, Processes, free_port, wait_until

pytest.importorskip("h2", reason="the h2 package (test extras) runs the HTTP/2 backend")

from tests.helpers.backends import (
    GRPC_SERVER_STREAM,
    GRPC_UNARY,
    Exchange,
    grpc_call,
    h1_request,
    h2_request,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

H1_AUTHORITY = "web.demo-ns.svc.cluster.local:8080"
H2_AUTHORITY = "h2.demo-ns.svc.cluster.local:8080"
GRPC_AUTHORITY = "echo.demo-ns.svc.cluster.local:50051"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "date"}


@dataclass
class Case:
    """One exchange sent through Envoy, and what its files must be called."""

    kind: str
    authority: str
    trace_id: str
    exchange: Exchange
    has_trailers: bool = False

    def stem(self, direction: str) -> str:
        prefix = self.authority if direction == "inbound" else NAMESPACE
        return f"{prefix}-{self.trace_id}"


def b3(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:32]


def send_traffic(port: int, label: str) -> list[Case]:
    """HTTP/1.1 GET and POST, HTTP/2 POST, gRPC unary and server-streaming, each with an
    x-b3-traceid of its own."""
    cases = []

    def trace(kind: str) -> str:
        return b3(f"{label}/{kind}")

    get_id, post_id = trace("h1-get"), trace("h1-post")
    cases.append(
        Case(
            "h1-get",
            H1_AUTHORITY,
            get_id,
            h1_request(port, "GET", "/get", H1_AUTHORITY, [("x-b3-traceid", get_id)]),
        )
    )
    cases.append(
        Case(
            "h1-post",
            H1_AUTHORITY,
            post_id,
            h1_request(
                port,
                "POST",
                "/post",
                H1_AUTHORITY,
                [("x-b3-traceid", post_id), ("content-type", "text/plain")],
                b"hello through envoy",
            ),
        )
    )
    h2_id = trace("h2")
    cases.append(
        Case(
            "h2",
            H2_AUTHORITY,
            h2_id,
            h2_request(
                port,
                "POST",
                "/h2/echo",
                H2_AUTHORITY,
                [("x-b3-traceid", h2_id), ("content-type", "text/plain")],
                b"h2 request body",
            ),
            has_trailers=True,
        )
    )
    for kind, method, request in (
        ("grpc-unary", GRPC_UNARY, b"ping"),
        ("grpc-stream", GRPC_SERVER_STREAM, b"stream-me"),
    ):
        trace_id = trace(kind)
        exchange = grpc_call(port, method, GRPC_AUTHORITY, [("x-b3-traceid", trace_id)], request)
        cases.append(Case(kind, GRPC_AUTHORITY, trace_id, exchange, has_trailers=True))
    for case in cases:
        assert case.exchange.status in (0, 200), (case.kind, case.exchange)
    return cases


def pb_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.endswith(".pb")}


def pairs(headers: Iterable[object]) -> list[tuple[str, str]]:
    return [(h.key, h.value) for h in headers]  # type: ignore[attr-defined]


def sent_request_headers(case: Case) -> list[tuple[str, str]]:
    """The request headers as Envoy records them: lowercase, Host as :authority."""
    shown = []
    for key, value in case.exchange.request_headers:
        lowered = key.lower()
        shown.append((":authority" if lowered == "host" else lowered, value))
    if case.kind.startswith("grpc"):
        shown += [(":authority", case.authority), (":path", kind_path(case.kind))]
    return shown


def kind_path(kind: str) -> str:
    return GRPC_UNARY if kind == "grpc-unary" else GRPC_SERVER_STREAM


def expected_trailers(case: Case) -> list[tuple[str, str]]:
    if case.kind.startswith("grpc"):
        return [("grpc-status", "0"), *case.exchange.response_trailers]
    return case.exchange.response_trailers


# --- buffered -----------------------------------------------------------------------------


def check_buffered(case: Case, trace: HttpBufferedTrace) -> None:
    request, response = trace.request, trace.response
    assert set(sent_request_headers(case)) <= set(pairs(request.headers)), case.kind
    assert request.body.as_bytes == case.exchange.request_body
    assert not request.body.truncated
    recorded = pairs(response.headers)
    assert (":status", "200") in recorded
    received = {(k, v) for k, v in case.exchange.response_headers if k not in HOP_BY_HOP}
    assert received <= set(recorded), case.kind
    assert response.body.as_bytes == case.exchange.response_body, case.kind
    assert not response.body.truncated
    assert set(expected_trailers(case)) <= set(pairs(response.trailers)), case.kind


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_buffered_traces_through_envoy_land_one_file_per_transaction(
    envoy: Envoy, processes: Processes, tmp_path: Path, direction: str
) -> None:
    output = tmp_path / "out"
    _emulator, target = processes.emulator(output)
    relay = processes.relay(envoy.admin_url, target, "--direction", direction, "--buffered")

    cases = send_traffic(envoy.listener_port, f"buffered-{direction}")
    expected = {f"{case.stem(direction)}-1.pb" for case in cases}
    wait_until(lambda: set(pb_files(output)) >= expected)

    assert relay.stop() == 0, relay.log
    assert re.search(r"relay stopped read=5 forwarded=5 confirmed=5.* dropped=0 ", relay.log)
    files = pb_files(output)
    assert set(files) == expected
    for case in cases:
        check_buffered(case, TraceWrapper.FromString(files[f"{case.stem(direction)}-1.pb"])
                      .http_buffered_trace)  # fmt: skip


# --- streamed -----------------------------------------------------------------------------

_ORDER = re.compile(
    r"request_headers( request_body_chunk)*( request_trailers)?"
    r" response_headers( response_body_chunk)*( response_trailers)?"
)


def segments_of(files: dict[str, bytes], stem: str) -> list[HttpStreamedTraceSegment]:
    """The segments written under a stem, by sequence number; asserts the numbers run
    1, 2, 3... with no gap."""
    numbered = {
        int(name[len(stem) + 1 : -3]): content
        for name, content in files.items()
        if name.startswith(f"{stem}-") and name[len(stem) + 1 : -3].isdigit()
    }
    assert sorted(numbered) == list(range(1, len(numbered) + 1)), sorted(numbered)
    return [
        TraceWrapper.FromString(numbered[n]).http_streamed_trace_segment for n in sorted(numbered)
    ]


def body_of(segments: list[HttpStreamedTraceSegment], piece: str) -> bytes:
    return b"".join(
        getattr(s, piece).as_bytes for s in segments if s.WhichOneof("message_piece") == piece
    )


def complete(files: dict[str, bytes], stem: str, case: Case) -> bool:
    try:
        segments = segments_of(files, stem)
    except AssertionError:
        return False
    pieces = [s.WhichOneof("message_piece") for s in segments]
    if case.has_trailers:
        return "response_trailers" in pieces
    return body_of(segments, "response_body_chunk") == case.exchange.response_body


def check_streamed(case: Case, segments: list[HttpStreamedTraceSegment]) -> None:
    pieces = " ".join(str(s.WhichOneof("message_piece")) for s in segments)
    assert _ORDER.fullmatch(pieces), (case.kind, pieces)
    assert len({s.trace_id for s in segments}) == 1
    request_headers = pairs(segments[0].request_headers.headers)
    assert set(sent_request_headers(case)) <= set(request_headers), case.kind
    assert body_of(segments, "request_body_chunk") == case.exchange.request_body, case.kind
    [response] = [s for s in segments if s.HasField("response_headers")]
    recorded = pairs(response.response_headers.headers)
    assert (":status", "200") in recorded
    if not case.kind.startswith("grpc"):
        backend = "h2" if case.kind == "h2" else "h1"
        assert ("x-backend", backend) in recorded
    assert body_of(segments, "response_body_chunk") == case.exchange.response_body, case.kind
    trailers = [
        pairs(s.response_trailers.headers) for s in segments if s.HasField("response_trailers")
    ]
    if case.has_trailers:
        assert set(expected_trailers(case)) <= set(trailers[0]), case.kind
    else:
        assert trailers == []


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_streamed_traces_through_envoy_land_one_file_per_segment_in_order(
    envoy: Envoy, processes: Processes, tmp_path: Path, direction: str
) -> None:
    output = tmp_path / "out"
    _emulator, target = processes.emulator(output)
    relay = processes.relay(envoy.admin_url, target, "--direction", direction, "--streamed")

    cases = send_traffic(envoy.listener_port, f"streamed-{direction}")
    assert wait_until(
        lambda: all(complete(pb_files(output), c.stem(direction), c) for c in cases)
    ), sorted(pb_files(output))

    assert relay.stop() == 0, relay.log
    assert re.search(r"relay stopped.* unconfirmed=0 unsent=0 dropped=0 ", relay.log)
    files = pb_files(output)
    stems = {name.rsplit("-", 1)[0] for name in files}
    assert stems == {case.stem(direction) for case in cases}
    for case in cases:
        check_streamed(case, segments_of(files, case.stem(direction)))


# --- one stream per Envoy, matching, and Envoy going away -----------------------------------


def test_a_second_relay_on_the_same_envoy_is_refused_with_a_clear_reason(
    envoy: Envoy, processes: Processes, tmp_path: Path
) -> None:
    _emulator, target = processes.emulator(tmp_path / "out")
    first = processes.relay(envoy.admin_url, target)
    second = processes.relay(envoy.admin_url, target, wait_attached=False)

    assert second.process.wait(20) == 1
    assert "another /tap stream is already attached to this Envoy" in second.log
    assert first.process.poll() is None
    assert first.stop() == 0


def test_header_match_taps_only_the_matching_requests(
    envoy: Envoy, processes: Processes, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    _emulator, target = processes.emulator(output)
    relay = processes.relay(envoy.admin_url, target, "--match-header", "x-tap-me=yes")

    tapped, ignored = b3("match/yes"), b3("match/no")
    port = envoy.listener_port
    h1_request(port, "GET", "/get", H1_AUTHORITY, [("x-b3-traceid", ignored)])
    h1_request(port, "GET", "/get", H1_AUTHORITY, [("x-b3-traceid", tapped), ("x-tap-me", "yes")])
    name = f"{H1_AUTHORITY}-{tapped}-1.pb"
    assert wait_until(lambda: name in pb_files(output))

    assert relay.stop() == 0
    assert set(pb_files(output)) == {name}


def test_relay_attaches_again_when_envoy_restarts(
    envoy_binary: Path, backend_ports: dict[str, int], processes: Processes, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    _emulator, target = processes.emulator(output)
    admin_port = free_port()
    first = processes.envoy(envoy_binary, backend_ports, admin_port=admin_port, name="first")
    relay = processes.relay(first.admin_url, target)
    before = b3("restart/before")
    h1_request(first.listener_port, "GET", "/get", H1_AUTHORITY, [("x-b3-traceid", before)])
    assert wait_until(lambda: f"{H1_AUTHORITY}-{before}-1.pb" in pb_files(output))

    assert first.process.stop() == 0
    second = processes.envoy(envoy_binary, backend_ports, admin_port=admin_port, name="second")
    relay.wait_for_line(r"relay attached.* attach=2$", timeout=30)
    after = b3("restart/after")
    h1_request(second.listener_port, "GET", "/get", H1_AUTHORITY, [("x-b3-traceid", after)])
    assert wait_until(lambda: f"{H1_AUTHORITY}-{after}-1.pb" in pb_files(output))

    assert relay.stop() == 0
    assert set(pb_files(output)) == {
        f"{H1_AUTHORITY}-{before}-1.pb",
        f"{H1_AUTHORITY}-{after}-1.pb",
    }
    assert "attaching again" in relay.log


def test_an_unknown_config_id_is_refused_at_start_with_envoys_reason(
    envoy: Envoy, processes: Processes, tmp_path: Path
) -> None:
    _emulator, target = processes.emulator(tmp_path / "out")
    relay = processes.relay(
        envoy.admin_url, target, "--config-id", "no-such-tap", wait_attached=False
    )

    assert relay.process.wait(20) == 1
    assert "Envoy refused the tap configuration: Unknown config id 'no-such-tap'" in relay.log
