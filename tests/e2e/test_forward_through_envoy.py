"""The bridge end to end: two real Envoys stand in for two stock Istio sidecars running the
tap-filter chart with its default values (the ext_proc sink), pointed at emulator A; A
forwards every transaction to a TapSinkService tool, here emulator B, a second process. B
receives StreamTapsRequests whose traces are byte for byte A's files, and names them exactly
as A did: the client's outbound capture by its namespace, the server's inbound capture by the
authority, which B can only do when the identifiers carry each proxy's node and direction.

    client -> [sleep-2-59564 sidecar: outbound] -> [server sidecar: inbound] -> backend
                        \\________ ext_proc ________/
                                    A  --StreamTaps-->  B
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.backends import CASE_HEADER
from tests.helpers.chart_bootstrap import Backend, Workload, chart_bootstrap, running_envoy
from tests.helpers.emulator import EmulatorProcess, published, wait_for
from tests.helpers.exact_clients import h1_send
from tests.helpers.extproc_envoy import RecordedBackends, stems, written_everything
from tests.helpers.forwarding import forward_metrics, forwarding, wait_published
from tests.helpers.harness import Processes

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CLIENT = Workload(
    "sleep-2-59564", pod="sleep-2-7c8d9f6b5-m4n8p", ip="10.244.1.12", workload="sleep-2"
)
SERVER = Workload(
    "httpbin-go-httpbin-1-56058",
    pod="httpbin-go-httpbin-5b9c7d8f6-z7x2c",
    ip="10.244.2.34",
    workload="httpbin-go-httpbin",
)
AUTHORITY = "httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080"
SERVICE_FQDN = "httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc.cluster.local"
REQUESTS = 6


@dataclass
class Bridge:
    a: EmulatorProcess
    b: EmulatorProcess
    trace_ids: list[str]


def _emulator(stack: contextlib.ExitStack, output_dir: Path, *args: str) -> EmulatorProcess:
    emulator = EmulatorProcess(output_dir, list(args)).start()

    def stop() -> None:
        try:
            emulator.stop(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()

    stack.callback(stop)
    return emulator


@pytest.fixture(scope="module")
def bridge(envoy_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    workdir = tmp_path_factory.mktemp("forward-e2e")
    processes = Processes(workdir)
    with contextlib.ExitStack() as stack:
        stack.callback(processes.close)
        backends = RecordedBackends(processes)
        b = _emulator(stack, workdir / "b")
        a = _emulator(stack, workdir / "a", *forwarding(b))
        host, port = a.tap.rsplit(":", 1)
        analysis = (host, int(port))
        server_bootstrap = chart_bootstrap(
            None,
            scratch=workdir / "server",
            backends=[Backend("inbound|8080||", backends.ports["h1"])],
            emulator=analysis,
            workload=SERVER,
            tracing=True,
        )
        server = stack.enter_context(
            running_envoy(envoy_binary, server_bootstrap, workdir / "server" / "envoy")
        )
        client_bootstrap = chart_bootstrap(
            None,
            scratch=workdir / "client",
            backends=[Backend(f"outbound|8080||{SERVICE_FQDN}", server.ports["inbound"])],
            emulator=analysis,
            workload=CLIENT,
            tracing=True,
        )
        client = stack.enter_context(
            running_envoy(envoy_binary, client_bootstrap, workdir / "client" / "envoy")
        )
        trace_ids = []
        for n in range(REQUESTS):
            case = f"forward/{n}"
            headers = [("host", AUTHORITY), ("user-agent", "curl/8.5.0"), (CASE_HEADER, case)]
            body = b"p" * (n * 1000)
            method = "POST" if body else "GET"
            exchange = h1_send(client.ports["outbound"], method, "/rec/anything", headers, body)
            assert exchange.status == 200, exchange
            trace_id = backends.wait_seen(case).header("x-b3-traceid")
            assert trace_id is not None
            trace_ids.append(trace_id)
        assert wait_for(lambda: written_everything(a.metrics_url, 2 * REQUESTS), 30), a.log
        yield Bridge(a, b, trace_ids)


def test_b_holds_byte_for_byte_what_a_wrote_under_the_same_names(bridge: Bridge) -> None:
    a_files = published(bridge.a.output_dir)
    b_files = wait_published(bridge.b.output_dir, lambda files: files == a_files, 20)
    assert b_files == a_files


def test_b_names_each_capture_by_its_proxy_and_direction_as_the_user_guide_does(
    bridge: Bridge,
) -> None:
    a_files = published(bridge.a.output_dir)
    b_files = wait_published(bridge.b.output_dir, lambda files: files == a_files, 20)
    expected = {f"{CLIENT.namespace}-{trace_id}" for trace_id in bridge.trace_ids} | {
        f"{AUTHORITY}-{trace_id}" for trace_id in bridge.trace_ids
    }
    assert stems(b_files) == expected


def test_a_forwarded_on_one_stream_per_capture_point_and_dropped_nothing(bridge: Bridge) -> None:
    a_files = published(bridge.a.output_dir)
    assert wait_for(lambda: forward_metrics(bridge.a)["messages_total"] == len(a_files), 20)
    shown = forward_metrics(bridge.a)
    assert shown["dropped_total"] == 0
    # The client sidecar's outbound capture point and the server sidecar's inbound one.
    assert shown["streams_open"] == 2
    assert shown["streams_opened_total"] == 2
