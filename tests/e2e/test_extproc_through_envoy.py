"""The ext_proc tap end to end: a real Envoy 1.40 runs the filter exactly as the tap-filter chart
renders it, pushes every transaction to a real emulator process, and the emulator writes files
named as the user guide names them, holding byte for byte what the client sent and received;
Envoy's own file tap beside the filter captures the same HTTP content.

Per module: the recorded backends (HTTP/1.1, h2c, gRPC; tests/helpers/backends.py) and, for
each of `trace.streaming: false` and `true`, one Envoy playing an Istio sidecar (the chart
rendered with that value, inbound and outbound capture points, Istio's Zipkin tracing, Envoy's
buffered file tap after the rendered filter) and one emulator. Every request kind goes once
through each of the four capture points; the tests then read what was written. The client
sends no trace headers: Envoy's tracer makes the trace id, the upstream reports the one it
received, and the file names must carry it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tests.helpers.backends import (
    CASE_HEADER,
    RECORDED_H1_SERVER,
    RECORDED_STREAM_FAIL,
    RECORDED_TRAILERS_ONLY,
    RECORDED_UNARY,
    STREAM_FAIL_PARTS,
    Headers,
    Seen,
    grpc_frame,
    pattern_bytes,
)
from tests.helpers.chart_bootstrap import (
    Backend,
    RunningEnvoy,
    Workload,
    chart_bootstrap,
    counters,
    file_tap_filter,
    running_envoy,
)
from tests.helpers.emulator import EmulatorProcess, metric, scrape, wait_for
from tests.helpers.exact_clients import (
    ExactExchange,
    grpc_send,
    grpc_status,
    h1_abort_upload,
    h1_send,
    h1_send_raw,
    h2_send,
)
from tests.helpers.extproc_envoy import (
    RecordedBackends,
    Transaction,
    from_buffered,
    http_filter_names,
    pb_files,
    read_capture,
    rewrite_prefix,
    start_emulator,
    stems,
    tap_per_listener,
    written_everything,
)
from tests.helpers.harness import Processes

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

NAMESPACE = "sleep-2-59564"
WORKLOAD = Workload(NAMESPACE, pod="sleep-2-6d8f7c9b5-q2w7x", ip="10.0.0.31", workload="sleep-2")
MODES = {"buffered": False, "streamed": True}
DIRECTIONS = ("inbound", "outbound")
# Mixed case on purpose: inbound file names carry the authority lowercased.
H1_AUTHORITY = "HttpBin.Demo.svc.cluster.local:8000"
H2_AUTHORITY = "H2.Demo.svc.cluster.local:8080"
GRPC_AUTHORITY = "Echo.Demo.svc.cluster.local:50051"
USER_AGENT = "extproc-e2e/1"
UPLOAD_BYTES = 100 * 1024
CHUNK_BYTES = 25 * 1024
ABORT_AFTER_BYTES = 32 * 1024
H2_BODY_BYTES = 48 * 1024
RESPONSE_BYTES = 1024 * 1024
# h2c requests under this prefix reach the upstream rewritten to /rec/ (Envoy's router).
H2_PREFIX = "/h2/"

# --- what Envoy itself adds, removes or replaces, and where ---------------------------------
# Request headers the connection manager adds before any HTTP filter runs: the capture has them,
# with the values the upstream received.
HCM_REQUEST_ADDS = ("x-forwarded-proto", "x-request-id")
# The tracer's headers: injected after the capture point (by the router), so the filter's
# snapshot has none; the emulator adds them from the side stream's own tracing metadata, and
# they must equal what the upstream received.
TRACER_REQUEST_ADDS = ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled")
# What the HTTP/1.1 codec takes out of the request's header map (and the upstream codec puts
# back): the capture never has it.
H1_CODEC_REMOVES = ("transfer-encoding",)
# Response headers the connection manager sets after every HTTP filter ran: the client gets
# them, the capture does not (`server: envoy` replaces the upstream's own `server`).
HCM_RESPONSE_ADDS = ("date", "server")
# What a gRPC server's handler never sees of the request headers it received.
GRPC_SERVER_HIDES = (":method", ":path", ":scheme", ":authority", "content-type", "te")
# Hop-by-hop response headers of the client's HTTP/1.1 connection, not of the transaction.
HOP_BY_HOP = ("connection", "transfer-encoding", "keep-alive")

# --- what only one of the two captures can know (test of the file tap beside ext_proc) -------
# Envoy's tap serializes the live header maps when the stream ends, after the router and the
# connection manager changed them; ext_proc sends a snapshot as each part passes the filter.
# Both have the tracer's x-b3-* (the tap from the live map, the emulator from the side
# stream's metadata), the same bodies and trailers, the request part of an aborted upload
# with no response, and only the response of a request Envoy refused itself.
ONLY_THE_TAP_SEES_IN_REQUESTS = {
    "x-envoy-expected-rq-timeout-ms": "the router adds it after the filter ran",
    "x-envoy-original-path": "the router keeps the client's path there after a prefix_rewrite",
}
ONLY_THE_TAP_SEES_IN_RESPONSES = {
    "date": "the connection manager dates every response after the filters",
    "connection": "the connection manager closes the connection of a request it refused",
}
# Values only ext_proc has (the tap holds Envoy's final value instead).
ONLY_EXT_PROC_SEES = {
    ":path": "the path the client sent, before the router's prefix_rewrite",
    "server": "the upstream's own `server`, which the connection manager replaces by `envoy`",
}


@dataclass(frozen=True)
class Target:
    """Where one request goes and how it is found again."""

    port: int
    case: str  # sent as CASE_HEADER; the upstream reports it back
    backends: RecordedBackends


@dataclass(frozen=True)
class Kind:
    """One kind of request, and what the client must see."""

    name: str
    send: Callable[[Target], ExactExchange]
    status: int  # HTTP status the client gets (0: none, the client gave up)
    grpc_status: str | None = None
    upstream_server: str | None = None  # the `server` header the upstream answers with
    reaches_upstream: bool = True
    complete: bool = True


def _h1_headers(target: Target, *extra: tuple[str, str]) -> Headers:
    return [("host", H1_AUTHORITY), ("user-agent", USER_AGENT), *extra, (CASE_HEADER, target.case)]


def _h1_get(to: Target) -> ExactExchange:
    headers = _h1_headers(to, ("accept", "application/json"))
    return h1_send(to.port, "GET", "/rec/get", headers)


def _h1_post_content_length(to: Target) -> ExactExchange:
    headers = _h1_headers(to, ("content-type", "application/octet-stream"))
    return h1_send(to.port, "POST", "/rec/echo", headers, pattern_bytes(UPLOAD_BYTES))


def _h1_post_chunked(to: Target) -> ExactExchange:
    def forwarded(body_bytes: int) -> None:
        to.backends.wait_forwarded(to.case, body_bytes)

    # Each chunk goes once the upstream has the one before: one read, one part, each.
    headers = _h1_headers(to, ("content-type", "application/octet-stream"))
    body = pattern_bytes(UPLOAD_BYTES)
    return h1_send(
        to.port,
        "POST",
        "/rec/upload",
        headers,
        body,
        chunk_bytes=CHUNK_BYTES,
        after_chunk=forwarded,
    )


def _h1_get_1mib(to: Target) -> ExactExchange:
    return h1_send(to.port, "GET", f"/rec/bytes/{RESPONSE_BYTES}", _h1_headers(to))


def _h1_bad_host(to: Target) -> ExactExchange:
    headers = [("host", "evil host"), ("user-agent", USER_AGENT), (CASE_HEADER, to.case)]
    return h1_send_raw(to.port, "GET", "/rec/get", headers)


def _h1_abort_upload(to: Target) -> ExactExchange:
    def forwarded(body_bytes: int) -> None:
        to.backends.wait_forwarded(to.case, body_bytes)

    headers = _h1_headers(to, ("content-type", "application/octet-stream"))
    body = pattern_bytes(ABORT_AFTER_BYTES)
    return h1_abort_upload(to.port, "/rec/upload", headers, UPLOAD_BYTES, body, forwarded)


def _h2c_get(to: Target) -> ExactExchange:
    headers = [("user-agent", USER_AGENT), (CASE_HEADER, to.case)]
    return h2_send(to.port, "GET", f"{H2_PREFIX}get", H2_AUTHORITY, headers)


def _h2c_post(to: Target) -> ExactExchange:
    headers = [("content-type", "application/octet-stream"), (CASE_HEADER, to.case)]
    body = pattern_bytes(H2_BODY_BYTES)
    return h2_send(to.port, "POST", f"{H2_PREFIX}post", H2_AUTHORITY, headers, body)


def _grpc(method: str, message: bytes) -> Callable[[Target], ExactExchange]:
    def call(to: Target) -> ExactExchange:
        return grpc_send(to.port, method, GRPC_AUTHORITY, [(CASE_HEADER, to.case)], message)

    return call


KINDS = [
    # First: an aborted upload is written only after Envoy's deferred close (5 s), which then
    # overlaps the other requests.
    Kind("h1_abort_upload", _h1_abort_upload, 0, complete=False),
    Kind("h1_get", _h1_get, 200, upstream_server=RECORDED_H1_SERVER),
    Kind(
        "h1_post_content_length", _h1_post_content_length, 200, upstream_server=RECORDED_H1_SERVER
    ),
    Kind("h1_post_chunked", _h1_post_chunked, 200, upstream_server=RECORDED_H1_SERVER),
    Kind("h1_get_1mib", _h1_get_1mib, 200, upstream_server=RECORDED_H1_SERVER),
    Kind("h2c_get", _h2c_get, 200),
    Kind("h2c_post", _h2c_post, 200),
    Kind("grpc_unary", _grpc(RECORDED_UNARY, b"ping" * 250), 200, grpc_status="0"),
    Kind("grpc_server_stream_error", _grpc(RECORDED_STREAM_FAIL, b"stream-me"), 200, "8"),
    Kind("grpc_trailers_only", _grpc(RECORDED_TRAILERS_ONLY, b"refuse-me"), 200, "3"),
    # Last: Envoy answers it itself, with no request part, so the emulator names it after the
    # proxy it already saw on the same connection.
    Kind("h1_bad_host", _h1_bad_host, 400, reaches_upstream=False),
]
KIND_NAMES = [kind.name for kind in KINDS]


@dataclass
class Sent:
    """One request through one capture point: what the client and the upstream saw."""

    mode: str
    direction: str
    kind: Kind
    exchange: ExactExchange
    seen: Seen | None  # None: it never reached the upstream

    @property
    def trace_id(self) -> str:
        assert self.seen is not None
        trace_id = self.seen.header("x-b3-traceid")
        assert trace_id is not None and re.fullmatch(r"[0-9a-f]{32}", trace_id), self.seen
        return trace_id

    @property
    def stem(self) -> str:
        """`<authority>-<traceId>` inbound, `<clientNamespace>-<traceId>` outbound."""
        if self.direction == "inbound":
            authority = self.exchange.authority
            assert authority is not None
            return f"{authority.lower()}-{self.trace_id}"
        return f"{NAMESPACE}-{self.trace_id}"


@dataclass
class Point:
    """One mode's Envoy and emulator, and what was written."""

    envoy: RunningEnvoy
    emulator: EmulatorProcess
    taps: dict[str, Path]  # listener -> directory of Envoy's file tap
    files: dict[str, bytes]
    envoy_counters: dict[str, int]


@dataclass
class Traffic:
    points: dict[str, Point]
    sent: dict[tuple[str, str, str], Sent]  # (mode, direction, kind)

    def of(self, mode: str, direction: str, kind: str) -> Sent:
        return self.sent[mode, direction, kind]


def _start_point(
    stack: contextlib.ExitStack,
    envoy_binary: Path,
    backends: RecordedBackends,
    workdir: Path,
    streaming: bool,
) -> tuple[RunningEnvoy, EmulatorProcess, dict[str, Path]]:
    emulator = start_emulator(stack, workdir / "out")
    host, port = emulator.tap.rsplit(":", 1)
    ports = backends.ports
    bootstrap = chart_bootstrap(
        {"trace": {"streaming": streaming}},
        scratch=workdir,
        backends=[
            Backend("h1", ports["h1"], prefix="/rec/"),
            Backend("h2", ports["h2"], http2=True, prefix=H2_PREFIX),
            Backend("grpc", ports["grpc"], http2=True, prefix="/demo.Recorded/"),
        ],
        emulator=(host, int(port)),
        workload=WORKLOAD,
        tracing=True,
        extra_http_filters=[file_tap_filter(workdir / "taps" / "tap")],
    )
    expected_filters = [
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.tap",
        "envoy.filters.http.router",
    ]
    assert http_filter_names(bootstrap) == dict.fromkeys(DIRECTIONS, expected_filters)
    rewrite_prefix(bootstrap, H2_PREFIX, "/rec/")
    taps = tap_per_listener(bootstrap, workdir / "taps")
    envoy = stack.enter_context(running_envoy(envoy_binary, bootstrap, workdir / "envoy"))
    return envoy, emulator, taps


def _send(kind: Kind, mode: str, direction: str, port: int, backends: RecordedBackends) -> Sent:
    case = f"{mode}/{direction}/{kind.name}"
    exchange = kind.send(Target(port, case, backends))
    assert exchange.status == kind.status, (case, exchange)
    assert grpc_status(exchange) == kind.grpc_status, (case, exchange)
    seen = backends.wait_seen(case) if kind.reaches_upstream else None
    return Sent(mode, direction, kind, exchange, seen)


def _settled(
    mode: str, envoy: RunningEnvoy, emulator: EmulatorProcess, taps: dict[str, Path]
) -> Point:
    """Once the emulator wrote every transaction and the file tap every trace: what is there."""
    transactions = len(KINDS) * len(DIRECTIONS)
    assert wait_for(lambda: written_everything(emulator.metrics_url, transactions), 30), (
        f"{mode}: not everything was written:\n{emulator.log[-3000:]}"
    )
    assert wait_for(lambda: all(len(pb_files(d)) == len(KINDS) for d in taps.values()))
    files = pb_files(emulator.output_dir)
    return Point(envoy, emulator, taps, files, counters(envoy.admin, "http."))


@pytest.fixture(scope="module")
def traffic(envoy_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    workdir = tmp_path_factory.mktemp("extproc-e2e")
    processes = Processes(workdir)
    with contextlib.ExitStack() as stack:
        stack.callback(processes.close)
        backends = RecordedBackends(processes)
        started = {
            mode: _start_point(stack, envoy_binary, backends, workdir / mode, streaming)
            for mode, streaming in MODES.items()
        }
        sent = {}
        for kind in KINDS:
            for mode, (envoy, _, _) in started.items():
                for direction in DIRECTIONS:
                    port = envoy.ports[direction]
                    sent[mode, direction, kind.name] = _send(kind, mode, direction, port, backends)
        points = {mode: _settled(mode, *point) for mode, point in started.items()}
        yield Traffic(points, sent)


# --- what the capture must hold, from both ends of the transaction --------------------------


def expected_request_headers(sent: Sent) -> Headers:
    """The client's request headers as the filter sees them, then what Envoy added."""
    exchange = sent.exchange
    if exchange.protocol == "h1":
        shown = [
            (":authority", exchange.authority or ""),
            (":path", exchange.path),
            (":method", exchange.method),
            (":scheme", "http"),
        ]
        shown += [
            (key.lower(), value)
            for key, value in exchange.request_headers
            if key.lower() != "host" and key.lower() not in H1_CODEC_REMOVES
        ]
    else:
        shown = list(exchange.request_headers)
    assert sent.seen is not None
    for name in (*HCM_REQUEST_ADDS, *TRACER_REQUEST_ADDS):
        value = sent.seen.header(name)
        assert value is not None, (name, sent.seen)
        shown.append((name, value))
    return shown


def expected_response_headers(sent: Sent) -> Headers:
    """The response headers the client got as they passed the filter: before the connection
    manager set `date` and `server`, without the client connection's hop-by-hop headers."""
    exchange = sent.exchange
    shown = [(":status", str(exchange.status))] if exchange.protocol == "h1" else []
    for key, value in exchange.response_headers:
        if key == "server" and sent.kind.upstream_server is not None:
            assert value == "envoy"
            shown.append((key, sent.kind.upstream_server))
        elif key not in HCM_RESPONSE_ADDS and key not in HOP_BY_HOP:
            shown.append((key, value))
    return shown


def capture_of(traffic: Traffic, sent: Sent) -> Transaction:
    return read_capture(traffic.points[sent.mode].files, sent.stem)


def bad_host_stem(traffic: Traffic, mode: str, direction: str) -> str:
    """The one stem under a direction's prefix that no request with a trace id claims."""
    claimed = {
        sent.stem
        for sent in traffic.sent.values()
        if sent.mode == mode and sent.direction == direction and sent.seen is not None
    }
    prefix = "no-authority" if direction == "inbound" else NAMESPACE
    unclaimed = {
        stem
        for stem in stems(traffic.points[mode].files) - claimed
        if stem.startswith(f"{prefix}-")
    }
    assert len(unclaimed) == 1, unclaimed
    return unclaimed.pop()


PARAMETERS = [
    pytest.param(mode, direction, kind, id=f"{mode}-{direction}-{kind}")
    for mode in MODES
    for direction in DIRECTIONS
    for kind in KIND_NAMES
]
UPSTREAM_PARAMETERS = [p for p in PARAMETERS if p.values[2] != "h1_bad_host"]


# --- 1. names and content -------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "direction", "kind"), UPSTREAM_PARAMETERS)
def test_each_transaction_is_named_as_the_user_guide_says(
    traffic: Traffic, mode: str, direction: str, kind: str
) -> None:
    sent = traffic.of(mode, direction, kind)
    files = traffic.points[mode].files
    if direction == "inbound":
        authority = sent.exchange.authority or ""
        assert authority != authority.lower()  # the name must lowercase it
        stem = f"{authority.lower()}-{sent.trace_id}"
    else:
        stem = f"{NAMESPACE}-{sent.trace_id}"
    # Buffered: one file per transaction; streamed: one per part, numbered in order.
    parts = len(read_capture(files, stem).pieces) if mode == "streamed" else 1
    carrying_the_trace_id = sorted(name for name in files if sent.trace_id in name)
    assert carrying_the_trace_id == sorted(f"{stem}-{seq}.pb" for seq in range(1, parts + 1))


@pytest.mark.parametrize(("mode", "direction", "kind"), UPSTREAM_PARAMETERS)
def test_each_capture_holds_what_the_client_sent_and_got_byte_for_byte(
    traffic: Traffic, mode: str, direction: str, kind: str
) -> None:
    sent = traffic.of(mode, direction, kind)
    capture = capture_of(traffic, sent)
    exchange = sent.exchange

    assert capture.request_headers == expected_request_headers(sent)
    assert capture.request_body == exchange.request_body
    assert capture.request_trailers == []
    assert not capture.request_truncated
    if not sent.kind.complete:  # the client gave up: no response at all
        assert capture.response_headers is None
        assert capture.response_body == b""
        assert capture.response_trailers == []
        return
    assert capture.response_headers == expected_response_headers(sent)
    assert capture.response_body == exchange.response_body
    assert capture.response_trailers == exchange.response_trailers
    assert not capture.response_truncated


@pytest.mark.parametrize(("mode", "direction", "kind"), UPSTREAM_PARAMETERS)
def forwarded_path(path: str) -> str:
    """The path the router sends upstream for a client's path."""
    return "/rec/" + path[len(H2_PREFIX) :] if path.startswith(H2_PREFIX) else path


def as_forwarded(sent: Sent, captured: Headers) -> Headers:
    """Captured request headers as the upstream gets them: rewritten path; HTTP/1.1 upstreams
    get `host` and no `:scheme`, and a chunked body's transfer-encoding back."""
    shown = []
    h1 = sent.seen is not None and sent.seen.protocol == "h1"
    for key, value in captured:
        if key == ":path":
            value = forwarded_path(value)
        if h1 and key == ":authority":
            key = "host"
        elif h1 and key == ":scheme":
            continue
        shown.append((key, value))
    if h1 and sent.exchange.request_header("transfer-encoding") is not None:
        shown.append(("transfer-encoding", "chunked"))
    return shown


@pytest.mark.parametrize(("mode", "direction", "kind"), UPSTREAM_PARAMETERS)
def test_the_upstream_received_the_capture_plus_only_the_routers_additions(
    traffic: Traffic, mode: str, direction: str, kind: str
) -> None:
    sent = traffic.of(mode, direction, kind)
    assert sent.seen is not None
    capture = capture_of(traffic, sent)
    assert capture.request_headers is not None
    received = sent.seen.headers
    router_adds = [(k, v) for k, v in received if k in ONLY_THE_TAP_SEES_IN_REQUESTS]
    assert ("x-envoy-expected-rq-timeout-ms", "15000") in router_adds
    if sent.exchange.path != forwarded_path(sent.exchange.path):
        assert ("x-envoy-original-path", sent.exchange.path) in router_adds
    rest = [(k, v) for k, v in received if k not in ONLY_THE_TAP_SEES_IN_REQUESTS]
    forwarded = as_forwarded(sent, capture.request_headers)
    if sent.seen.protocol == "grpc":
        # A gRPC server shows the metadata only: no pseudo-headers, content-type or te.
        assert rest == [(k, v) for k, v in forwarded if k not in GRPC_SERVER_HIDES]
    else:
        assert sorted(rest) == sorted(forwarded)
    assert sent.seen.complete == sent.kind.complete
    assert sent.seen.body_bytes == len(capture.request_body)


def test_grpc_server_streaming_capture_keeps_every_message_and_the_error_status(
    traffic: Traffic,
) -> None:
    for mode in MODES:
        for direction in DIRECTIONS:
            sent = traffic.of(mode, direction, "grpc_server_stream_error")
            capture = capture_of(traffic, sent)
            messages = [f"part-{n}:stream-me".encode() for n in range(STREAM_FAIL_PARTS)]
            assert capture.response_body == b"".join(grpc_frame(m) for m in messages)
            assert dict(capture.response_trailers)["grpc-status"] == "8"
            if mode == "streamed":
                # One DATA frame per message, each a segment of its own; trailers end it.
                assert capture.pieces == [
                    "request_headers",
                    "request_body_chunk",
                    "response_headers",
                    *["response_body_chunk"] * STREAM_FAIL_PARTS,
                    "response_trailers",
                ]


def test_a_chunked_upload_sent_chunk_by_chunk_streams_one_segment_per_chunk(
    traffic: Traffic,
) -> None:
    for direction in DIRECTIONS:
        capture = capture_of(traffic, traffic.of("streamed", direction, "h1_post_chunked"))
        chunks = UPLOAD_BYTES // CHUNK_BYTES
        assert capture.pieces[: 1 + chunks] == ["request_headers", *["request_body_chunk"] * chunks]
        assert capture.request_body == pattern_bytes(UPLOAD_BYTES)


def test_a_trailers_only_grpc_error_is_its_response_headers_alone(traffic: Traffic) -> None:
    for mode in MODES:
        for direction in DIRECTIONS:
            capture = capture_of(traffic, traffic.of(mode, direction, "grpc_trailers_only"))
            assert capture.response_headers is not None
            assert dict(capture.response_headers)["grpc-status"] == "3"
            assert capture.response_body == b"" and capture.response_trailers == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_request_envoy_refuses_itself_is_written_under_a_random_trace_id(
    traffic: Traffic, mode: str, direction: str
) -> None:
    stem = bad_host_stem(traffic, mode, direction)
    prefix = "no-authority" if direction == "inbound" else NAMESPACE
    assert re.fullmatch(rf"{re.escape(prefix)}-[0-9a-f]{{1,16}}", stem), stem
    capture = read_capture(traffic.points[mode].files, stem)
    exchange = traffic.of(mode, direction, "h1_bad_host").exchange
    assert exchange.status == 400
    assert capture.request_headers is None  # Envoy answered before any filter saw a request
    assert capture.response_headers == [
        (":status", "400"),
        *[
            (key, value)
            for key, value in exchange.response_headers
            if key not in HCM_RESPONSE_ADDS and key not in HOP_BY_HOP
        ],
    ]
    assert capture.response_body == exchange.response_body == b"Bad Request"
    if mode == "streamed":
        assert capture.pieces == ["response_headers", "response_body_chunk"]


@pytest.mark.parametrize("mode", MODES)
def test_nothing_else_is_written(traffic: Traffic, mode: str) -> None:
    expected = {
        sent.stem for sent in traffic.sent.values() if sent.mode == mode and sent.seen is not None
    }
    expected |= {bad_host_stem(traffic, mode, direction) for direction in DIRECTIONS}
    assert stems(traffic.points[mode].files) == expected
    assert len(expected) == len(KINDS) * len(DIRECTIONS)


@pytest.mark.parametrize("mode", MODES)
def test_the_aborted_uploads_are_written_incomplete_and_counted(
    traffic: Traffic, mode: str
) -> None:
    point = traffic.points[mode]
    samples = scrape(point.emulator.metrics_url)
    aborted = len(DIRECTIONS)
    every = len(KINDS) * len(DIRECTIONS)
    assert (
        metric(samples, "tap_emulator_extproc_transactions_total", outcome="incomplete") == aborted
    )
    assert (
        metric(samples, "tap_emulator_extproc_transactions_total", outcome="complete")
        == every - aborted
    )
    ended = "tap_emulator_streams_ended_total"
    assert metric(samples, ended, source="ext_proc", outcome="unfinished") == aborted
    assert metric(samples, ended, source="ext_proc", outcome="ok") == every - aborted
    assert metric(samples, ended, source="ext_proc") == every
    assert metric(samples, "tap_emulator_extproc_transactions_dropped_total") == 0
    assert metric(samples, "tap_emulator_streams_refused_total") == 0
    assert metric(samples, "tap_emulator_files_written_total") == len(point.files)
    for direction in DIRECTIONS:
        capture = capture_of(traffic, traffic.of(mode, direction, "h1_abort_upload"))
        assert capture.request_body == pattern_bytes(ABORT_AFTER_BYTES)
        assert capture.response_headers is None


@pytest.mark.parametrize("mode", MODES)
def test_envoy_opened_one_side_stream_per_request_and_none_failed(
    traffic: Traffic, mode: str
) -> None:
    seen = traffic.points[mode].envoy_counters
    for direction in DIRECTIONS:
        prefix = f"http.{direction}.ext_proc."
        assert seen[f"{prefix}streams_started"] == len(KINDS)
        assert seen.get(f"{prefix}streams_failed", 0) == 0
        assert seen.get(f"{prefix}failure_mode_allowed", 0) == 0


# --- 2. Envoy's own tap beside it -----------------------------------------------------------


def tap_capture(traffic: Traffic, sent: Sent) -> Transaction:
    """The file tap's trace of the same request: the one with its x-request-id; for a request
    Envoy refused, the one without a request."""
    directory = traffic.points[sent.mode].taps[sent.direction]
    found = []
    for path in sorted(directory.iterdir()):
        trace = from_buffered(TraceWrapper.FromString(path.read_bytes()).http_buffered_trace)
        if sent.seen is None:
            if trace.request_headers is None:
                found.append(trace)
        elif ("x-request-id", sent.seen.header("x-request-id")) in (trace.request_headers or []):
            found.append(trace)
    assert len(found) == 1, (sent.kind.name, len(found))
    return found[0]


def as_the_filter_saw_it(
    tap: Headers | None, client_path: str, upstream_server: str | None
) -> Headers | None:
    """The tap's headers with what only the tap sees taken out and the values that differ set
    to what passed the filter."""
    if tap is None:
        return None
    only_tap = {**ONLY_THE_TAP_SEES_IN_REQUESTS, **ONLY_THE_TAP_SEES_IN_RESPONSES}
    shown = []
    for key, value in tap:
        if key in only_tap:
            continue
        if key == ":path" and key in ONLY_EXT_PROC_SEES:
            value = client_path
        elif key == "server" and key in ONLY_EXT_PROC_SEES:
            assert value == "envoy"
            if upstream_server is None:
                continue
            value = upstream_server
        shown.append((key, value))
    return shown


@pytest.mark.parametrize(("mode", "direction", "kind"), PARAMETERS)
def test_envoys_file_tap_beside_it_decodes_to_the_same_http_content(
    traffic: Traffic, mode: str, direction: str, kind: str
) -> None:
    sent = traffic.of(mode, direction, kind)
    stem = sent.stem if sent.seen is not None else bad_host_stem(traffic, mode, direction)
    ours = read_capture(traffic.points[mode].files, stem)
    tap = tap_capture(traffic, sent)

    path = sent.exchange.path
    assert ours.request_headers == as_the_filter_saw_it(tap.request_headers, path, None)
    assert ours.response_headers == as_the_filter_saw_it(
        tap.response_headers, path, sent.kind.upstream_server
    )
    for part in ("body", "truncated", "trailers"):
        for half in ("request", "response"):
            name = f"{half}_{part}"
            assert getattr(ours, name) == getattr(tap, name), name
    if sent.seen is not None and sent.exchange.protocol == "h2" and path.startswith(H2_PREFIX):
        assert tap.request_headers is not None
        tap_request = dict(tap.request_headers)
        assert tap_request["x-envoy-original-path"] == path
        assert tap_request[":path"] == path.replace(H2_PREFIX, "/rec/", 1)
