"""Bad input from "Envoy" is reported and counted, never a traceback: a malformed
`/server_info`, a huge JSON object, empty traces. And when the relay stops for a reason,
the line giving the reason comes before the totals line. Each test runs the relay process
between a scripted admin endpoint and a real emulator."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.helpers.emulator import slow_server_entry
from tests.helpers.fake_envoy_admin import (
    NODE,
    ChunkWriter,
    FakeEnvoyAdmin,
    admin_sample_objects,
    buffered_trace_json,
    sample_inbound_names,
    server_info_of,
)
from tests.helpers.harness import Processes
from tests.helpers.relay_checks import (
    line,
    line_index,
    memory_kib,
    pb_files,
    stopped,
    totals,
    wait_until,
)

MiB = 1 << 20
NESTING = 5_000  # past what json can parse, under the weight bound

# Each: the /server_info body (built when used), and what the relay's error line must name.
MALFORMED_SERVER_INFO: dict[str, tuple[Callable[[], bytes], str]] = {
    "node id is a number": (lambda: server_info_of({"id": 12345, "cluster": "c"}), r"\bid\b"),
    "metadata is a string": (
        lambda: server_info_of({"id": "n", "metadata": "NAMESPACE=relay-ns"}),
        r"metadata",
    ),
    "node is a list": (lambda: server_info_of(["n", "c"]), r"node"),
    "deeply nested": (
        lambda: (
            b'{"node": {"id": "n", "metadata": {"a": ' + b"[" * NESTING + b"]" * NESTING + b"}}}"
        ),
        r"nested",
    ),
    "huge": (lambda: server_info_of({"id": "n", "metadata": {"pad": "x" * (20 * MiB)}}), r"MiB"),
}


@pytest_asyncio.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.close()


@pytest.mark.parametrize("case", MALFORMED_SERVER_INFO)
@pytest.mark.asyncio
async def test_a_malformed_server_info_refuses_that_envoy_and_what_was_read_is_forwarded(
    processes: Processes, tmp_path: Path, case: str
) -> None:
    """The first attach reads 50 traces, which wait in the relay (the emulator's disk is
    stalled); Envoy then goes away and comes back with a `/server_info` the relay cannot
    read. The relay says what was wrong, stops reading, forwards the 50 and exits 1."""
    build, named = MALFORMED_SERVER_INFO[case]
    body = build()
    traces = [buffered_trace_json(index, 20_000, f"{index:032x}") for index in range(50)]

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(b"".join(traces))
        out.close()

    admin = FakeEnvoyAdmin(
        script, server_info=lambda call: server_info_of(NODE) if call == 1 else body
    )
    url = await admin.start()
    output, gate = tmp_path / "out", tmp_path / "gate"
    _emulator, target = await asyncio.to_thread(
        processes.emulator, output, "--queue-max-items", "4", entry=slow_server_entry(0.0, gate)
    )
    relay = processes.relay(url, target, wait_attached=False)

    error = await line(relay, r"ERROR .*server_info")
    assert re.search(named, error), error
    gate.touch()
    assert await stopped(relay) == 1, relay.log
    assert "Traceback" not in relay.log
    assert len(pb_files(output)) == 50
    assert line_index(relay, r"ERROR .*server_info") < line_index(relay, "relay stopped")
    stats = totals(relay)
    assert (stats["read"], stats["confirmed"], stats["unsent"]) == ("50", "50", "0")
    await admin.close()


def huge_object(size_bytes: int) -> bytes:
    """One JSON object of about `size_bytes` that costs far more once parsed than it
    weighs as text: a headers list of empty lists."""
    count = size_bytes // 3
    return b'{"http_buffered_trace": {"request": {"headers": [' + b"[]," * count + b"[]]}}}"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_huge_json_object_is_skipped_early_and_the_relay_memory_stays_small(
    processes: Processes, tmp_path: Path
) -> None:
    """A 60 MiB JSON object under a 64 MiB --max-trace-bytes, made of 20 million empty
    lists: parsing it would take about 25 times its size. The relay gives up on it as soon
    as its weight passes the limit, counts it, and forwards the traces around it."""
    objects = admin_sample_objects()
    huge = huge_object(60 * MiB)
    go = asyncio.Event()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(objects[0])
        await go.wait()
        for start in range(0, len(huge), MiB):
            await out.send(huge[start : start + MiB])
        await out.send(b"".join(objects[1:]))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    _emulator, target = await asyncio.to_thread(processes.emulator, output)
    relay = processes.relay(
        url, target, "--streamed", "--max-trace-bytes", str(64 * MiB), wait_attached=False
    )
    await line(relay, "relay streaming")
    before_kib = memory_kib(relay.pid)
    go.set()

    assert await wait_until(lambda: len(pb_files(output)) == 12, within_seconds=60), relay.log
    grown_kib = memory_kib(relay.pid) - before_kib
    assert await stopped(relay, signal.SIGTERM) == 0, relay.log
    assert sorted(pb_files(output)) == sorted(sample_inbound_names())
    assert grown_kib < 16 * 1024, f"the relay's peak memory grew by {grown_kib} KiB"
    stats = totals(relay)
    assert (stats["read"], stats["oversize"], stats["confirmed"]) == ("12", "1", "12")
    await admin.close()


@pytest.mark.asyncio
async def test_empty_traces_are_counted_and_not_forwarded(
    processes: Processes, tmp_path: Path
) -> None:
    objects = admin_sample_objects()
    empties = [b"{}"] * 10_000 + [
        b"{ }",
        b'{"http_buffered_trace": {}}',
        b'{"http_streamed_trace_segment": {"trace_id": "7"}}',
        b'{"a_trace_from_a_future_envoy": {"x": 1}}',
    ]

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(b"".join(empties[:5_000]))
        await out.send(b"".join(objects[:6]))
        await out.send(b"".join(empties[5_000:]))
        await out.send(b"".join(objects[6:]))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    _emulator, target = await asyncio.to_thread(processes.emulator, output)
    relay = processes.relay(url, target, "--streamed", "--max-traces", "12", wait_attached=False)

    assert await stopped(relay) == 0, relay.log
    assert sorted(pb_files(output)) == sorted(sample_inbound_names())
    stats = totals(relay)
    assert (stats["read"], stats["empty"], stats["confirmed"]) == ("12", str(len(empties)), "12")
    await admin.close()


@pytest.mark.asyncio
async def test_the_reason_the_relay_stopped_is_logged_before_its_totals(
    processes: Processes, tmp_path: Path
) -> None:
    async def script(attach: int, out: ChunkWriter) -> None:
        raise AssertionError("never attached")

    admin = FakeEnvoyAdmin(script, attached=True)  # another client holds the one /tap stream
    url = await admin.start()
    _emulator, target = await asyncio.to_thread(processes.emulator, tmp_path / "out")
    relay = processes.relay(url, target, wait_attached=False)

    assert await stopped(relay) == 1, relay.log
    reason = line_index(relay, r"ERROR .*another /tap stream is already attached")
    assert reason < line_index(relay, "relay stopped"), relay.log
    await admin.close()


def test_the_fixtures_are_what_they_claim() -> None:
    assert json.loads(huge_object(30))["http_buffered_trace"]["request"]["headers"] == [[]] * 11
