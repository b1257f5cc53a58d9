"""Forwarding: emulator A streams every trace it accepts on to a TapSinkService tool B, a real
second process (another emulator, which names what it receives, or the recording sink, which
writes down each message as xds-protos reads it).

Each trace here has a trace id of its own, so each file is `<prefix>-<traceId>-1.pb`: B names
what it receives exactly as A named it when the identifiers carry the node and direction, and a
trace B received twice would show as a `-2.pb`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.helpers import traces as t
from tests.helpers.emulator import (
    EmulatorFactory,
    EmulatorProcess,
    published,
    send_streams,
    wait_for,
)
from tests.helpers.extproc_client import play
from tests.helpers.extproc_vectors import ExtProcCase, load_all
from tests.helpers.forwarding import (
    RecordingSink,
    forward_metrics,
    forwarding,
    held_by_both,
    wait_published,
)
from tests.helpers.harness import free_port

SLEEP_POD = "sleep-7d4f"
OTHER_POD = "sleep-9x2k"


def trace_id_of(n: int) -> str:
    return f"{0xF0F0:04x}{n:028x}"


def buffered(n: int, authority: str = t.SEED_AUTHORITY) -> t.Json:
    return t.buffered(
        t.request_headers(authority=authority, trace=trace_id_of(n), path=f"/{n}"),
        response_body=b"x" * (n * 37 % 900),
    )


def streamed(n: int, envoy_id: int) -> list[t.Json]:
    """Request headers, a body chunk and response headers of one streamed transaction."""
    headers = t.headers(t.request_headers(trace=trace_id_of(n), method="POST"))
    return [
        t.segment(envoy_id, "request_headers", {"headers": headers}),
        t.segment(envoy_id, "request_body_chunk", t.body(b"chunk-%d" % n)),
        t.segment(envoy_id, "response_headers", {"headers": t.headers([(":status", "200")])}),
    ]


def mixed_streams() -> list[t.Json]:
    """Three senders: two pods' outbound capture points and one inbound, buffered and
    streamed traces."""
    return [
        t.stream([buffered(n) for n in range(20)], t.identifier("inbound")),
        t.stream([buffered(n) for n in range(20, 40)], t.identifier("outbound")),
        t.stream(
            [piece for n in range(40, 45) for piece in streamed(n, 7000 + n)],
            t.identifier("outbound", pod=OTHER_POD, namespace="other-ns"),
        ),
    ]


@pytest.fixture
def b(start_emulator: EmulatorFactory, tmp_path: Path) -> EmulatorProcess:
    return start_emulator(output_dir=tmp_path / "b")


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[RecordingSink]:
    recording = RecordingSink(tmp_path / "sink.jsonl")
    yield recording
    recording.close()


def start_a(start_emulator: EmulatorFactory, tmp_path: Path, *args: str) -> EmulatorProcess:
    return start_emulator(*args, output_dir=tmp_path / "a")


@pytest.mark.asyncio
async def play_vectors(a: EmulatorProcess) -> list[ExtProcCase]:
    """Every recorded ext_proc stream, played into A on one connection, as one Envoy would."""
    cases = load_all()
    async with grpc.aio.insecure_channel(a.tap) as channel:
        for case in cases:
            await play(a.tap, case.messages, case.metadata, channel=channel)
    return cases


# --- what the tool receives ------------------------------------------------------------------


def test_streamtaps_traces_reach_b_byte_for_byte_under_the_names_a_gave_them(
    start_emulator: EmulatorFactory, tmp_path: Path, b: EmulatorProcess
) -> None:
    a = start_a(start_emulator, tmp_path, *forwarding(b))
    results = send_streams(a.tap, mixed_streams())
    assert [r["code"] for r in results] == ["OK"] * 3

    a_files = published(a.output_dir)
    assert len(a_files) == 20 + 20 + 5 * 3
    # Inbound names carry the authority, outbound ones the namespace from the node: B gives
    # them the same names only if the identifiers carried the node and the direction.
    assert {n.split("-f0f0")[0] for n in a_files} == {
        t.SEED_AUTHORITY,
        t.SEED_NAMESPACE,
        "other-ns",
    }
    b_files = wait_published(b.output_dir, lambda files: len(files) >= len(a_files), 20)
    assert b_files == a_files
    # The forwarding process reports its counters a few times a second.
    assert wait_for(lambda: forward_metrics(a)["messages_total"] == len(a_files))
    shown = forward_metrics(a)
    assert shown["dropped_total"] == 0
    assert shown["streams_open"] == 3  # one per sender, long-lived
    assert shown["state_ready"] == 1


def test_each_sender_gets_one_stream_that_starts_with_its_identifier(
    start_emulator: EmulatorFactory, tmp_path: Path, sink: RecordingSink
) -> None:
    a = start_a(start_emulator, tmp_path, *forwarding(sink))
    streams = mixed_streams()
    send_streams(a.tap, streams)
    # A second call from the first sender goes on the stream the sender already has.
    send_streams(a.tap, [t.stream([buffered(99)], t.identifier("inbound"), 5000)])
    expected = 20 + 20 + 15 + 1
    assert wait_for(lambda: len(sink.records()) == expected, 20), len(sink.records())

    by_identifier = {}
    for records in sink.streams().values():
        first, *rest = records
        assert first.identifier is not None
        assert all(record.identifier is None for record in rest)
        by_identifier[first.identifier["tap_id"], first.identifier["node"]["id"]] = records
    for stream, (direction, namespace, pod) in zip(
        streams,
        [
            ("inbound", t.SEED_NAMESPACE, SLEEP_POD),
            ("outbound", t.SEED_NAMESPACE, SLEEP_POD),
            ("outbound", "other-ns", OTHER_POD),
        ],
        strict=True,
    ):
        original = t.identifier(direction, namespace=namespace, pod=pod)
        records = by_identifier.pop((original["tap_id"], original["node"]["id"]))
        # The node's id and cluster and its NAMESPACE metadata: what the emulator names by.
        assert records[0].identifier == {
            "node": {
                "id": original["node"]["id"],
                "cluster": original["node"]["cluster"],
                "metadata": {"NAMESPACE": namespace},
            },
            "tap_id": f"f5-tap-test-{direction}",
        }
        sent_ids = [int(m["trace_id"]) for m in stream["messages"]]
        if direction == "inbound" and namespace == t.SEED_NAMESPACE:
            sent_ids.append(5000)
        assert [r.trace_id for r in records] == sent_ids
    assert by_identifier == {}
    a_digests = {hashlib.sha256(data).hexdigest() for data in published(a.output_dir).values()}
    assert {r.trace_sha256 for r in sink.records()} == a_digests


@pytest.mark.asyncio
async def test_ext_proc_transactions_reach_b_byte_for_byte_under_the_names_a_gave_them(
    start_emulator: EmulatorFactory, tmp_path: Path, b: EmulatorProcess
) -> None:
    a = start_a(start_emulator, tmp_path, *forwarding(b))
    cases = await play_vectors(a)

    a_files = wait_published(a.output_dir, lambda files: len(files) >= len(cases), 20)
    b_files = wait_published(b.output_dir, lambda files: held_by_both(a_files, files), 20)
    assert b_files == a_files


@pytest.mark.asyncio
async def test_ext_proc_senders_reach_the_tool_as_the_proxy_and_its_capture_point(
    start_emulator: EmulatorFactory, tmp_path: Path, sink: RecordingSink
) -> None:
    a = start_a(start_emulator, tmp_path, *forwarding(sink))
    cases = await play_vectors(a)
    a_files = wait_published(a.output_dir, lambda files: len(files) >= len(cases), 20)
    assert wait_for(lambda: len(sink.records()) == len(a_files), 20)

    firsts = [records[0].identifier for records in sink.streams().values()]
    node = {
        "id": "sidecar~10.0.0.17~httpbin-7d4f9c8b6-abcde.demo~demo.svc.cluster.local",
        "cluster": "httpbin.demo",
        "metadata": {"NAMESPACE": "demo"},
    }
    # One stream per capture point; a tap id that names no direction gets the listener's.
    assert sorted(first["tap_id"] for first in firsts if first) == [
        "vectors-attributes-outbound",
        "vectors-inbound",
        "vectors-outbound",
    ]
    assert all(first == {"node": node, "tap_id": first["tap_id"]} for first in firsts if first)


# --- the pure bridge -------------------------------------------------------------------------


def readyz(emulator: EmulatorProcess) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{emulator.metrics_url}/readyz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_pure_bridge_writes_nothing_and_forwards_everything(
    start_emulator: EmulatorFactory, tmp_path: Path, b: EmulatorProcess
) -> None:
    a = start_a(start_emulator, tmp_path, *forwarding(b), "--output-dir", "")
    assert "output_dir=off" in a.log
    results = send_streams(a.tap, mixed_streams())
    assert [r["code"] for r in results] == ["OK"] * 3

    b_files = wait_published(b.output_dir, lambda files: len(files) >= 55, 20)
    assert len(b_files) == 55
    assert published(a.output_dir) == {}
    assert not any(a.output_dir.iterdir())


def test_a_pure_bridge_is_ready_only_while_the_tool_is_reachable(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    port = free_port()
    bridge = start_a(start_emulator, tmp_path, *forwarding(f"127.0.0.1:{port}"), "--output-dir", "")
    writer = start_emulator(*forwarding(f"127.0.0.1:{port}"), output_dir=tmp_path / "writer")

    assert wait_for(lambda: readyz(bridge)[0] == 503, 10)
    assert f"forward_to 127.0.0.1:{port} is unreachable" in readyz(bridge)[1]
    assert readyz(writer)[0] == 200  # its files do not need the tool

    start_emulator("--listen", f"127.0.0.1:{port}", output_dir=tmp_path / "b")
    assert wait_for(lambda: readyz(bridge)[0] == 200, 20), readyz(bridge)


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    trustme = pytest.importorskip("trustme")
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = trustme.CA()
    paths = {"ca": str(directory / "ca.pem")}
    ca.cert_pem.write_to_path(paths["ca"])
    for name, identity in (("b", "127.0.0.1"), ("a", "forwarder.test")):
        cert = ca.issue_cert(identity)
        cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
        (directory / f"{name}.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        paths[f"{name}_key"], paths[f"{name}_cert"] = (
            str(directory / f"{name}.key"),
            str(directory / f"{name}.pem"),
        )
    return paths


def test_forwarding_over_mutual_tls_reaches_a_tool_that_requires_client_certificates(
    start_emulator: EmulatorFactory, tmp_path: Path, pki: dict[str, str]
) -> None:
    b = start_emulator(
        "--tls-cert-file", pki["b_cert"],
        "--tls-key-file", pki["b_key"],
        "--tls-client-ca-file", pki["ca"],
        output_dir=tmp_path / "b",
    )  # fmt: skip
    a = start_a(
        start_emulator,
        tmp_path,
        *forwarding(b),
        "--forward-tls-ca-file", pki["ca"],
        "--forward-tls-cert-file", pki["a_cert"],
        "--forward-tls-key-file", pki["a_key"],
    )  # fmt: skip
    send_streams(a.tap, mixed_streams()[:1])
    a_files = published(a.output_dir)
    assert wait_published(b.output_dir, lambda files: held_by_both(a_files, files), 20)


def test_a_tool_that_refuses_the_client_gets_nothing_and_a_keeps_writing(
    start_emulator: EmulatorFactory, tmp_path: Path, pki: dict[str, str]
) -> None:
    b = start_emulator(
        "--tls-cert-file", pki["b_cert"],
        "--tls-key-file", pki["b_key"],
        "--tls-client-ca-file", pki["ca"],
        output_dir=tmp_path / "b",
    )  # fmt: skip
    a = start_a(start_emulator, tmp_path, *forwarding(b), "--forward-tls-ca-file", pki["ca"])
    results = send_streams(a.tap, mixed_streams()[:1])
    assert results[0]["code"] == "OK"
    assert len(published(a.output_dir)) == 20
    assert forward_metrics(a)["messages_total"] == 0
    assert published(b.output_dir) == {}


# --- shutdown --------------------------------------------------------------------------------


def test_on_sigterm_a_ends_its_streams_and_the_tool_confirms_what_they_carried(
    start_emulator: EmulatorFactory, tmp_path: Path, b: EmulatorProcess
) -> None:
    a = start_a(start_emulator, tmp_path, *forwarding(b))
    send_streams(a.tap, mixed_streams())
    a_files = published(a.output_dir)

    assert a.stop() == 0
    assert "forwarded 55 traces" in a.log
    assert wait_published(b.output_dir, lambda files: files == a_files, 10)
    # B logged each of A's streams as ended OK by its sender.
    stopped = b.stop()
    assert stopped == 0


def test_on_sigterm_with_the_tool_away_a_exits_at_once_and_counts_what_it_drops(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    a = start_a(
        start_emulator,
        tmp_path,
        *forwarding(f"127.0.0.1:{free_port()}"),
        "--drain-timeout-seconds", "15",
    )  # fmt: skip
    send_streams(a.tap, mixed_streams())
    assert forward_metrics(a)["messages_total"] == 0

    started = time.monotonic()
    assert a.stop(timeout=20) == 0
    assert time.monotonic() - started < 10  # no drain timeout waited out for a tool away
    assert "forwarded 0 traces (55 dropped at shutdown)" in a.log
