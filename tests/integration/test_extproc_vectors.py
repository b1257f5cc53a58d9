"""The ext_proc source on real Envoy recordings: every recorded Process stream played into a
real emulator (in-process, over loopback gRPC) becomes what Envoy's own tap wrote for the same
request, named as the user guide names files. No Envoy needed: tests/e2e run one."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import pytest

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.config import Settings
from tap_emulator.testing import InProcessEmulator
from tests.helpers.extproc_client import play, with_metadata
from tests.helpers.extproc_vectors import ExtProcCase, load_all, load_case

AUTHORITY = "httpbin.demo.svc.cluster.local:8000"
NAMESPACE = "demo"
CASES = load_all()
# Headers only Envoy's tap can know: it serializes the live header maps after the router ran.
ONLY_THE_TAP_KNOWS = {"x-envoy-expected-rq-timeout-ms", "x-envoy-original-path", ":path"}


def headers_of(message: object) -> list[tuple[str, str]]:
    return [(h.key, h.value or h.raw_value.decode()) for h in message.headers]  # type: ignore[attr-defined]


def tracer_trace_id(case: ExtProcCase) -> str | None:
    value = case.metadata_value("x-b3-traceid")
    return None if value is None else str(value)


def expected_stem(case: ExtProcCase, trace_id: str) -> str:
    inbound = case.listener == "inbound"
    return f"{AUTHORITY if inbound else NAMESPACE}-{trace_id}"


async def play_all(out: Path, cases: list[ExtProcCase], **overrides: str) -> InProcessEmulator:
    emulator = InProcessEmulator(Settings(output_dir=out))
    async with emulator:
        # One channel, as one proxy keeps one connection: a stream without attributes (an
        # Envoy-generated reply) is named after the proxy last seen on that connection.
        async with grpc.aio.insecure_channel(emulator.tap_target) as channel:
            for case in cases:
                played = await play(
                    emulator.tap_target,
                    case.messages,
                    with_metadata(case.metadata, **overrides),
                    channel=channel,
                )
                assert played.code is grpc.StatusCode.OK, (case.name, played)
        assert await emulator.stop() == 0
    return emulator


@pytest.fixture(scope="module")
def buffered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InProcessEmulator]:
    out = tmp_path_factory.mktemp("buffered")
    emulator = asyncio.run(play_all(out, CASES, x_tap_streaming="false"))
    return out, emulator


def only_file(out: Path, stem: str) -> TraceWrapper:
    matches = sorted(out.glob(f"{stem}-*.pb"))
    assert [p.name for p in matches] == [f"{stem}-1.pb"]
    return TraceWrapper.FromString(matches[0].read_bytes())


@pytest.mark.parametrize("case", [c for c in CASES if c.case != "h1_bad_host"], ids=str)
def test_each_transaction_is_one_file_named_as_the_guide_says_and_equal_to_the_tap(
    buffered: tuple[Path, InProcessEmulator], case: ExtProcCase
) -> None:
    out, _ = buffered
    trace_id = tracer_trace_id(case)
    assert trace_id is not None
    ours = only_file(out, expected_stem(case, trace_id)).http_buffered_trace
    tap = TraceWrapper.FromString(case.tap_trace() or b"").http_buffered_trace

    assert ours.request.body.as_bytes == tap.request.body.as_bytes
    assert ours.response.body.as_bytes == tap.response.body.as_bytes
    for ours_trailers, tap_trailers in (
        (ours.request.trailers, tap.request.trailers),
        (ours.response.trailers, tap.response.trailers),
    ):
        assert [(h.key, h.value) for h in ours_trailers] == [(h.key, h.value) for h in tap_trailers]
    ours_request = dict(headers_of(ours.request))
    tap_request = {k: v for k, v in headers_of(tap.request) if k not in ONLY_THE_TAP_KNOWS}
    if case.case == "h1_own_b3":
        # The client's own span: the tap shows the span Envoy made for the upstream instead.
        tap_request.pop("x-b3-spanid"), tap_request.pop("x-b3-parentspanid")
        ours_request.pop("x-b3-spanid")
    assert {k: v for k, v in ours_request.items() if k not in ONLY_THE_TAP_KNOWS} == tap_request
    ours_response = dict(headers_of(ours.response))
    tap_response = dict(headers_of(tap.response))
    for added_by_envoy in ("server", "date"):
        ours_response.pop(added_by_envoy, None), tap_response.pop(added_by_envoy, None)
    assert ours_response == tap_response


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bodies_are_what_the_client_sent_and_received(
    buffered: tuple[Path, InProcessEmulator], case: ExtProcCase
) -> None:
    out, _ = buffered
    trace_id = tracer_trace_id(case)
    if trace_id is None:
        pytest.skip("an Envoy-generated reply: its name is checked on its own")
    trace = only_file(out, expected_stem(case, trace_id)).http_buffered_trace
    client = case.client
    body = trace.request.body.as_bytes
    assert (len(body), hashlib.sha256(body).hexdigest()) == (
        client.request_body_bytes,
        client.request_body_sha256,
    )
    if client.status is not None:
        body = trace.response.body.as_bytes
        assert hashlib.sha256(body).hexdigest() == client.response_body_sha256
        assert dict(headers_of(trace.response))[":status"] == str(client.status)


def test_an_envoy_generated_reply_gets_the_fallback_authority_and_its_proxys_namespace(
    buffered: tuple[Path, InProcessEmulator],
) -> None:
    out, _ = buffered
    inbound = sorted(p.name for p in out.glob("no-authority-*.pb"))
    assert len(inbound) == 1  # inbound: named by authority, and there is none
    reply = TraceWrapper.FromString((out / inbound[0]).read_bytes()).http_buffered_trace
    assert not reply.request.headers and dict(headers_of(reply.response))[":status"] == "400"
    outbound = [
        p
        for p in out.glob(f"{NAMESPACE}-*.pb")
        if not TraceWrapper.FromString(p.read_bytes()).http_buffered_trace.request.headers
    ]
    assert len(outbound) == 1  # outbound: the namespace of the proxy on the same connection


def test_every_outcome_is_counted(buffered: tuple[Path, InProcessEmulator]) -> None:
    _, emulator = buffered
    registry = emulator.emulator.metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    aborted = sum(1 for c in CASES if c.case == "h1_abort_upload")
    assert value("tap_emulator_extproc_transactions_total", outcome="incomplete") == aborted
    assert (
        value("tap_emulator_extproc_transactions_total", outcome="complete") == len(CASES) - aborted
    )
    assert (
        value("tap_emulator_streams_ended_total", source="ext_proc", outcome="ok")
        == len(CASES) - aborted
    )
    assert (
        value("tap_emulator_streams_ended_total", source="ext_proc", outcome="unfinished")
        == aborted
    )
    assert value("tap_emulator_files_written_total") == len(CASES)
    assert (
        sum(
            value("tap_emulator_extproc_transactions_dropped_total", reason=r)
            for r in ("queue_full", "assembly_full", "shutdown")
        )
        == 0
    )


def test_streamed_capture_points_write_one_file_per_part_that_reassembles(tmp_path: Path) -> None:
    case = load_case("inbound/h1_post_chunked")
    asyncio.run(play_all(tmp_path, [case], x_tap_streaming="true"))
    stem = expected_stem(case, str(tracer_trace_id(case)))
    files = sorted(tmp_path.glob(f"{stem}-*.pb"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    segments = [TraceWrapper.FromString(p.read_bytes()).http_streamed_trace_segment for p in files]
    pieces = [segment.WhichOneof("message_piece") for segment in segments]
    # RqH RqB(25600)x4 RqB(0,eos) RsH RsB(94) RsB(0,eos): the empty end-of-stream bodies are
    # not parts of their own.
    assert pieces == [
        "request_headers",
        *["request_body_chunk"] * 4,
        "response_headers",
        "response_body_chunk",
    ]
    assert len({segment.trace_id for segment in segments}) == 1
    body = b"".join(s.request_body_chunk.as_bytes for s in segments)
    assert hashlib.sha256(body).hexdigest() == case.client.request_body_sha256


def test_a_small_body_limit_cuts_and_marks_the_body(tmp_path: Path) -> None:
    case = load_case("inbound/h1_post_content_length")
    emulator = asyncio.run(
        play_all(tmp_path, [case], x_tap_streaming="false", x_tap_max_buffered_rx_bytes="1000")
    )
    trace = only_file(tmp_path, expected_stem(case, str(tracer_trace_id(case)))).http_buffered_trace
    assert len(trace.request.body.as_bytes) == 1000 and trace.request.body.truncated
    assert not trace.response.body.truncated
    registry = emulator.emulator.metrics.registry
    assert (
        registry.get_sample_value(
            "tap_emulator_extproc_bodies_truncated_total", {"half": "request"}
        )
        == 1
    )
