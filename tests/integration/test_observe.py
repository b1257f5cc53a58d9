"""Metrics, health and readiness, read over real HTTP and gRPC after real runs."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import traces as t
from tests.helpers.emulator import (
    metric,
    published,
    scrape,
    send_streams,
    slow_server_entry,
    wait_for,
)
from tests.helpers.script_run import ClientRun
from tests.helpers.unavailable import unavailable


def http_get(url: str) -> tuple[int, str]:
    try:
        with urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except HTTPError as error:
        return error.code, error.read().decode()


def grpc_health(target: str, service: str = "") -> str:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_counters_agree_with_messages_sent_and_files_on_disk(start_emulator: Any) -> None:
    emulator = start_emulator()
    inbound = t.stream(
        [
            t.buffered(t.request_headers(trace=f"{n:032x}"), response_body=b"x" * n)
            for n in range(1, 6)
        ],
        t.identifier("inbound"),
    )
    segments = [
        t.segment(5, "request_headers", {"headers": t.headers(t.request_headers())}),
        t.segment(5, "response_headers", {"headers": t.headers([(":status", "200")])}),
        t.segment(5, "response_body_chunk", t.body(b"abc")),
    ]
    outbound = t.stream(segments, t.identifier("outbound"))
    socket_trace = {"socket_buffered_trace": {"trace_id": "77"}}
    odd = t.stream([socket_trace, {}], t.identifier("inbound"))  # {}: empty, nothing written
    # A trace of a kind this version does not know (TraceWrapper field 5): the fallback name.
    odd["messages"].append({"raw_b64": base64.b64encode(b"\x1a\x05\x2a\x03abc").decode()})
    odd["messages"].append(t.message(None))  # no trace at all: accepted, nothing written
    results = send_streams(emulator.tap, [inbound, outbound, odd])
    assert [r["code"] for r in results] == ["OK"] * 3

    samples = scrape(emulator.metrics_url)
    files = published(emulator.output_dir)
    received = "tap_emulator_messages_received_total"
    assert metric(samples, received, kind="buffered", direction="inbound") == 5
    assert metric(samples, received, kind="streamed_segment", direction="outbound") == 3
    assert metric(samples, received, kind="socket") == 1
    assert metric(samples, received, kind="other") == 1
    assert metric(samples, received, kind="none") == 2
    assert metric(samples, received) == 12
    assert metric(samples, "tap_emulator_files_written_total") == len(files) == 10
    assert metric(samples, "tap_emulator_written_bytes_total") == sum(map(len, files.values()))
    assert metric(samples, "tap_emulator_publish_latency_seconds_count") == 10
    assert metric(samples, "tap_emulator_fallback_names_total", kind="socket") == 1
    assert metric(samples, "tap_emulator_fallback_names_total", kind="other") == 1
    assert metric(samples, "tap_emulator_streams_opened_total") == 3
    assert metric(samples, "tap_emulator_streams_ended_total", outcome="ok") == 3
    assert metric(samples, "tap_emulator_streams_open") == 0
    assert metric(samples, "tap_emulator_received_bytes_total") > 0
    assert metric(samples, "tap_emulator_queue_items") == 0
    assert metric(samples, "tap_emulator_queue_capacity_items") == 10_000
    assert metric(samples, "tap_emulator_build_info", transport="grpcio") == 1
    assert metric(samples, "process_resident_memory_bytes") > 0


def test_streams_with_unknown_direction_are_counted(start_emulator: Any) -> None:
    emulator = start_emulator()
    ident = t.identifier("inbound")
    ident["tap_id"] = "tap-emulator"
    send_streams(emulator.tap, [t.stream([t.buffered(t.request_headers())], ident)])

    samples = scrape(emulator.metrics_url)
    assert metric(samples, "tap_emulator_streams_unknown_direction_total") == 1
    assert metric(samples, "tap_emulator_messages_received_total", direction="inbound") == 1


def test_distinct_authorities_do_not_add_series(start_emulator: Any) -> None:
    emulator = start_emulator()
    one = t.stream([t.buffered(t.request_headers("a.ns:80"))], t.identifier("inbound"))
    send_streams(emulator.tap, [one])
    before = set(scrape(emulator.metrics_url))
    many = [
        t.buffered(t.request_headers(f"svc-{n}.ns-{n}:80", trace=f"{n:032x}")) for n in range(300)
    ]
    send_streams(emulator.tap, [t.stream(many, t.identifier("inbound"))])

    assert set(scrape(emulator.metrics_url)) == before


def test_health_and_unknown_paths(start_emulator: Any) -> None:
    emulator = start_emulator()
    assert http_get(f"{emulator.metrics_url}/healthz") == (200, "ok\n")
    assert http_get(f"{emulator.metrics_url}/readyz") == (200, "ready\n")
    status, body = http_get(f"{emulator.metrics_url}/nothing-here")
    assert status == 404 and "/metrics" in body


@pytest.fixture
def tmpfs(tmp_path: Path) -> Any:
    mount_point = tmp_path / "out"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "none", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_readyz_fails_while_the_output_dir_is_unwritable(start_emulator: Any, tmpfs: Path) -> None:
    emulator = start_emulator(output_dir=tmpfs)
    assert http_get(f"{emulator.metrics_url}/readyz")[0] == 200

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    # The directory is probed once a second in a thread of its own; /readyz reads the result.
    assert wait_for(lambda: http_get(f"{emulator.metrics_url}/readyz")[0] == 503, timeout=5)
    status, body = http_get(f"{emulator.metrics_url}/readyz")
    assert status == 503 and "output directory: EROFS" in body
    assert wait_for(lambda: grpc_health(emulator.tap) == "NOT_SERVING", timeout=5)

    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    ready = (200, "ready\n")
    assert wait_for(lambda: http_get(f"{emulator.metrics_url}/readyz") == ready, timeout=5)
    assert wait_for(lambda: grpc_health(emulator.tap) == "SERVING", timeout=5)


def test_grpc_health_turns_not_serving_during_drain(start_emulator: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    emulator = start_emulator(entry=slow_server_entry(0.0, gate))
    assert grpc_health(emulator.tap) == "SERVING"
    assert grpc_health(emulator.tap, "envoy.service.tap.v3.TapSinkService") == "SERVING"
    client = ClientRun(
        {
            "target": emulator.tap,
            "streams": [t.stream([t.buffered(t.request_headers())], t.identifier("inbound"))],
        }
    )
    assert wait_for(lambda: metric(scrape(emulator.metrics_url), "tap_emulator_queue_items") == 1)

    assert emulator.process is not None
    emulator.process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "draining" in emulator.log)
    assert grpc_health(emulator.tap) == "NOT_SERVING"
    status, body = http_get(f"{emulator.metrics_url}/readyz")
    assert status == 503 and "shutting down" in body

    gate.touch()
    assert emulator.process.wait(30) == 0  # a second SIGTERM would mean "exit now"
    client.result()
    assert len(published(emulator.output_dir)) == 1


def test_json_logs_are_one_object_per_line(start_emulator: Any) -> None:
    emulator = start_emulator("--log-format", "json", "--log-level", "debug")
    send_streams(
        emulator.tap, [t.stream([t.buffered(t.request_headers())], t.identifier("inbound"))]
    )
    assert emulator.stop() == 0
    records = [json.loads(line) for line in emulator.log_lines]
    messages = [record["message"] for record in records]
    assert any(m.startswith("tap-emulator ") and "listening tap=" in m for m in messages)
    assert any("stream 1 opened" in m for m in messages)
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    # Per-message lines never appear, not even at debug level.
    assert sum("stream 1" in m for m in messages) <= 3


def test_info_log_has_no_per_stream_lines(start_emulator: Any) -> None:
    emulator = start_emulator()
    streams = [
        t.stream([t.buffered(t.request_headers())], t.identifier("inbound")) for _ in range(20)
    ]
    send_streams(emulator.tap, streams)
    assert emulator.stop() == 0
    assert len(emulator.log_lines) <= 5, emulator.log


def test_every_grpc_call_core_started_is_either_handled_or_shown_unhandled(
    start_emulator: Any,
) -> None:
    """gRPC core's own count of calls (channelz) against the calls the handlers were given:
    tap streams and health checks are handled; a call no handler takes (an unknown method,
    as a call core ends under overload) shows as unhandled."""
    emulator = start_emulator()
    streams = [
        t.stream([t.buffered(t.request_headers(trace=f"{n:032x}"))], t.identifier("inbound"))
        for n in range(1, 4)
    ]
    assert [r["code"] for r in send_streams(emulator.tap, streams)] == ["OK"] * 3
    assert grpc_health(emulator.tap) == "SERVING"
    samples = scrape(emulator.metrics_url)
    print(f"observed: started {metric(samples, 'tap_emulator_grpc_calls_started_total')}, "
          f"handled {metric(samples, 'tap_emulator_grpc_calls_handled_total')}")  # fmt: skip
    assert metric(samples, "tap_emulator_grpc_calls_handled_total") == 4
    assert metric(samples, "tap_emulator_grpc_calls_started_total") == 4
    assert metric(samples, "tap_emulator_grpc_calls_unhandled") == 0

    with grpc.insecure_channel(emulator.tap) as channel:
        unknown = channel.unary_unary("/envoy.service.tap.v3.TapSinkService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as refused:
            unknown(b"", timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    samples = scrape(emulator.metrics_url)
    assert metric(samples, "tap_emulator_grpc_calls_started_total") == 5
    assert metric(samples, "tap_emulator_grpc_calls_handled_total") == 4
    assert metric(samples, "tap_emulator_grpc_calls_unhandled") == 1
