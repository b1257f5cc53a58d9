"""Both ends of one hop, captured with no relay: two Envoys stand in for two Istio sidecars, each
running the tap-filter chart as it renders when installed in its own namespace, and one
request from the client pod through both gives the user guide's pair of files, with the same
trace id: `<clientNamespace>-<traceId>-1.pb` from the client sidecar's outbound capture and
`<authority>-<traceId>-1.pb` from the server sidecar's inbound capture.

    client -> [sleep-2-59564 sidecar: outbound capture] -> [server sidecar: inbound capture]
           -> backend
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tests.helpers.backends import CASE_HEADER, Seen
from tests.helpers.chart_bootstrap import (
    Backend,
    Workload,
    chart_bootstrap,
    running_envoy,
)
from tests.helpers.emulator import EmulatorProcess, metric, scrape, wait_for
from tests.helpers.exact_clients import ExactExchange, h1_send
from tests.helpers.extproc_envoy import (
    RecordedBackends,
    Transaction,
    pb_files,
    read_capture,
    start_emulator,
    stems,
    written_everything,
)
from tests.helpers.harness import Processes

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

# The user guide's example pair of file names, re-created.
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
RELEASE = "pi2"  # the filter instance, installed once in each namespace
CASE = "two-sidecars/get"
# What the client sidecar's router adds to the request on its way to the server sidecar.
CLIENT_ROUTER_ADDS = ("x-envoy-expected-rq-timeout-ms",)


@dataclass
class Hop:
    exchange: ExactExchange
    seen: Seen  # what the backend behind the server sidecar received
    files: dict[str, bytes]
    emulator: EmulatorProcess

    @property
    def trace_id(self) -> str:
        trace_id = self.seen.header("x-b3-traceid")
        assert trace_id is not None
        return trace_id

    def capture(self, stem: str) -> Transaction:
        return read_capture(self.files, stem)


@pytest.fixture(scope="module")
def hop(envoy_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hop]:
    workdir = tmp_path_factory.mktemp("two-sidecars")
    processes = Processes(workdir)
    with contextlib.ExitStack() as stack:
        stack.callback(processes.close)
        backends = RecordedBackends(processes)
        emulator = start_emulator(stack, workdir / "out")
        host, port = emulator.tap.rsplit(":", 1)
        analysis = (host, int(port))

        # The server pod's sidecar: inbound traffic goes to the application on its port.
        server_bootstrap = chart_bootstrap(
            None,
            scratch=workdir / "server",
            backends=[Backend("inbound|8080||", backends.ports["h1"])],
            emulator=analysis,
            workload=SERVER,
            release=RELEASE,
            tracing=True,
        )
        server = stack.enter_context(
            running_envoy(envoy_binary, server_bootstrap, workdir / "server" / "envoy")
        )
        # The client pod's sidecar: outbound traffic to the service goes to the server's
        # sidecar, as Istio sends it to the service's endpoints.
        client_bootstrap = chart_bootstrap(
            None,
            scratch=workdir / "client",
            backends=[Backend(f"outbound|8080||{SERVICE_FQDN}", server.ports["inbound"])],
            emulator=analysis,
            workload=CLIENT,
            release=RELEASE,
            tracing=True,
        )
        client = stack.enter_context(
            running_envoy(envoy_binary, client_bootstrap, workdir / "client" / "envoy")
        )

        headers = [("host", AUTHORITY), ("user-agent", "curl/8.5.0"), (CASE_HEADER, CASE)]
        exchange = h1_send(client.ports["outbound"], "GET", "/rec/get", headers)
        assert exchange.status == 200, exchange
        seen = backends.wait_seen(CASE)
        assert wait_for(lambda: written_everything(emulator.metrics_url, 2), 20), emulator.log
        # Default values, as `helm install pi2 deploy/charts/tap-filter -n <namespace>` renders.
        yield Hop(exchange, seen, pb_files(emulator.output_dir), emulator)


def test_one_request_through_two_sidecars_gives_the_user_guides_pair_of_files(hop: Hop) -> None:
    outbound = f"sleep-2-59564-{hop.trace_id}"
    inbound = f"httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080-{hop.trace_id}"
    assert stems(hop.files) == {outbound, inbound}
    assert f"{outbound}-1.pb" in hop.files and f"{inbound}-1.pb" in hop.files
    # The chart's default is trace.streaming: true, so each sequence is a segment of its own:
    # request headers first, then the response's headers and body.
    for stem in (outbound, inbound):
        assert hop.capture(stem).pieces == [
            "request_headers",
            "response_headers",
            "response_body_chunk",
        ]
        first = TraceWrapper.FromString(hop.files[f"{stem}-1.pb"])
        assert first.http_streamed_trace_segment.HasField("request_headers")


def test_the_two_captures_are_the_two_ends_of_the_same_hop(hop: Hop) -> None:
    outbound = hop.capture(f"{CLIENT.namespace}-{hop.trace_id}")
    inbound = hop.capture(f"{AUTHORITY}-{hop.trace_id}")
    assert outbound.request_headers is not None and inbound.request_headers is not None
    # The client sidecar's capture gets the tracer's headers from its side stream (its
    # snapshot is taken before the tracer runs); the server sidecar's capture shows them as
    # they arrived. Both hold the same request, header for header; the client router's
    # x-envoy-expected-rq-timeout-ms (if the server sidecar kept it) is not part of it.
    arrived = [h for h in inbound.request_headers if h[0] not in CLIENT_ROUTER_ADDS]
    assert arrived == outbound.request_headers
    sent = dict(outbound.request_headers)
    assert sent["x-b3-traceid"] == hop.trace_id
    assert sent["x-request-id"] == hop.seen.header("x-request-id")
    # The backend is one span further down: the server sidecar's, a child of the client's.
    assert hop.seen.header("x-b3-parentspanid") == sent["x-b3-spanid"]
    assert sent[":authority"] == AUTHORITY
    for capture in (outbound, inbound):
        assert capture.response_body == hop.exchange.response_body
        assert capture.response_headers is not None
        assert dict(capture.response_headers)[":status"] == "200"


def test_each_sidecar_tells_the_emulator_its_own_capture_point(hop: Hop) -> None:
    samples = scrape(hop.emulator.metrics_url)
    received = "tap_emulator_messages_received_total"
    segments = {  # one streamed segment per part of each transaction
        direction: len(hop.capture(stem).pieces)
        for direction, stem in (
            ("outbound", f"{CLIENT.namespace}-{hop.trace_id}"),
            ("inbound", f"{AUTHORITY}-{hop.trace_id}"),
        )
    }
    for direction, count in segments.items():
        assert metric(samples, received, source="ext_proc", direction=direction) == count
    assert metric(samples, "tap_emulator_extproc_transactions_total", outcome="complete") == 2
    assert metric(samples, "tap_emulator_streams_unknown_direction_total") == 0
