"""`tap-emulator relay` as a process, between a scripted admin endpoint (a real HTTP/1.1
server in this test's event loop, speaking Envoy's /tap protocol as Envoy 1.40 does) and a
real emulator: forwarding, re-attaching, emulator restarts, stopping, draining, backpressure.
The pieces inside it (splitter, conversion, queue, settings) are tested in tests/unit."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tap_emulator.tools.relay.convert import trace_from_json
from tests.helpers.emulator import slow_server_entry
from tests.helpers.fake_envoy_admin import (
    NAMESPACE,
    SAMPLE_B3,
    SAMPLE_GRPC_STEM,
    ChunkWriter,
    FakeEnvoyAdmin,
    admin_sample_objects,
    buffered_trace_json,
    sample_inbound_names,
)
from tests.helpers.harness import Processes, free_port
from tests.helpers.relay_checks import (
    line,
    memory_kib,
    pb_files,
    queue_items,
    stopped,
    totals,
    wait_until,
)


@pytest_asyncio.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.close()


def serialized(objects: list[bytes]) -> list[bytes]:
    return [trace_from_json(obj).SerializeToString() for obj in objects]


@pytest.mark.asyncio
async def test_relay_forwards_the_admin_stream_with_envoys_node_and_exits_after_max_traces(
    processes: Processes, tmp_path: Path
) -> None:
    objects = admin_sample_objects()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send_in_pieces(b"".join(objects), random.Random(7))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    _emulator, target = await asyncio.to_thread(processes.emulator, output)
    relay = processes.relay(
        url, target, "--streamed", "--direction", "outbound", "--max-traces", "12",
        wait_attached=False,
    )  # fmt: skip

    assert await stopped(relay) == 0, relay.log
    files = pb_files(output)
    names = [f"{NAMESPACE}-{SAMPLE_B3}-{n}.pb" for n in range(1, 13)]
    assert sorted(files) == sorted(names)
    assert [files[name] for name in names] == serialized(objects)
    [posted] = admin.tap_bodies
    assert posted["config_id"] == "tap-emulator"
    assert posted["tap_config"]["output_config"]["streaming"] is True
    assert posted["tap_config"]["output_config"]["sinks"][0]["format"] == "JSON_BODY_AS_BYTES"
    stats = totals(relay)
    assert (stats["read"], stats["confirmed"], stats["dropped"]) == ("12", "12", "0")
    await admin.close()


@pytest.mark.asyncio
async def test_relay_attaches_again_when_the_admin_connection_drops_mid_trace(
    processes: Processes, tmp_path: Path
) -> None:
    objects = admin_sample_objects()
    half = len(objects[5]) // 2

    async def script(attach: int, out: ChunkWriter) -> None:
        if attach == 1:
            await out.send(b"".join(objects[:5]) + objects[5][:half])
            out.close()  # Envoy went away in the middle of a trace
        else:
            await out.send(b"".join(objects[5:]))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    _emulator, target = await asyncio.to_thread(processes.emulator, output)
    relay = processes.relay(url, target, "--streamed", "--max-traces", "12", wait_attached=False)

    assert await stopped(relay) == 0, relay.log
    files = pb_files(output)
    assert sorted(files) == sorted(sample_inbound_names())
    assert [files[name] for name in sample_inbound_names()] == serialized(objects)
    stats = totals(relay)
    assert (stats["attaches"], stats["cut_short"], stats["streams"]) == ("2", "1", "1")
    assert admin.server_info_calls == 2
    assert "attaching again" in relay.log
    await admin.close()


@pytest.mark.asyncio
async def test_emulator_restart_loses_nothing_the_relay_had_read(
    processes: Processes, tmp_path: Path
) -> None:
    """The emulator drains (SIGTERM) and comes back on the same address. The relay sees the
    drain in gRPC health, closes its call cleanly (every trace written is confirmed), keeps
    reading into its queue while the emulator is away, and forwards it all on a new call.

    What a new call changes: a streamed transaction split across the two calls has its later
    segments named from Envoy's trace id, since the emulator correlates segments per call."""
    objects = admin_sample_objects()
    releases: asyncio.Queue[int] = asyncio.Queue()

    async def script(attach: int, out: ChunkWriter) -> None:
        sent = 0
        while sent < len(objects):
            count = await releases.get()
            await out.send(b"".join(objects[sent : sent + count]))
            sent += count

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    listen = f"127.0.0.1:{free_port()}"
    first, target = await asyncio.to_thread(processes.emulator, output, listen=listen)
    relay = processes.relay(url, target, "--streamed", "--max-traces", "12", wait_attached=False)
    await line(relay, "relay attached")

    releases.put_nowait(6)
    assert await wait_until(lambda: len(pb_files(output)) == 6)
    assert await stopped(first, signal.SIGTERM) == 0, first.log
    await line(relay, r"stream closed \(the emulator is draining\): 6")
    releases.put_nowait(6)  # read while the emulator is away
    await line(relay, "unavailable")
    await asyncio.to_thread(processes.emulator, output, listen=listen)

    assert await stopped(relay) == 0, relay.log
    files = pb_files(output)
    split = f"no-authority-{4657072182323551182:x}-1.pb"
    names = (
        sample_inbound_names()[:6] + [split] + [f"{SAMPLE_GRPC_STEM}-{n}.pb" for n in range(1, 6)]
    )
    assert sorted(files) == sorted(names)
    assert [files[name] for name in names] == serialized(objects)
    stats = totals(relay)
    assert (stats["confirmed"], stats["unconfirmed"], stats["streams"]) == ("12", "0", "2")
    await admin.close()


@pytest.mark.asyncio
async def test_sigterm_waits_for_the_emulators_ok_before_exiting_0(
    processes: Processes, tmp_path: Path
) -> None:
    objects = admin_sample_objects()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(b"".join(objects))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    gate = tmp_path / "gate"
    emulator, target = await asyncio.to_thread(
        processes.emulator, output, entry=slow_server_entry(0.0, gate)
    )
    relay = processes.relay(url, target, "--streamed", wait_attached=False)
    # All 12 are with the emulator, which cannot publish them until the gate opens.
    assert await wait_until(lambda: queue_items(emulator) == 12), relay.log

    relay.process.send_signal(signal.SIGTERM)
    await line(relay, r"closing stream \(done\): waiting for the emulator's answer")
    with pytest.raises(subprocess.TimeoutExpired):
        relay.process.wait(1.0)  # the relay must not exit before the emulator answered
    assert pb_files(output) == {}
    gate.touch()  # the emulator's disk recovers: it publishes, then answers OK

    assert await stopped(relay) == 0, relay.log
    assert sorted(pb_files(output)) == sorted(sample_inbound_names())
    assert totals(relay)["confirmed"] == "12"
    await admin.close()


@pytest.mark.asyncio
async def test_stop_with_the_emulator_unreachable_exits_1_naming_what_was_not_sent(
    processes: Processes,
) -> None:
    objects = admin_sample_objects()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(b"".join(objects))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    relay = processes.relay(
        url, f"127.0.0.1:{free_port()}", "--drain-timeout-seconds", "1", wait_attached=False
    )
    await asyncio.to_thread(relay.wait_for_line, "unavailable")

    assert await stopped(relay, signal.SIGTERM) == 1
    assert "12 traces read from Envoy were not sent" in relay.log
    stats = totals(relay)
    assert (stats["read"], stats["forwarded"], stats["unsent"]) == ("12", "0", "12")
    await admin.close()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_stalled_emulator_stops_the_relay_reading_and_its_memory_stays_bounded(
    processes: Processes, tmp_path: Path
) -> None:
    """Traces keep coming (24 MB) while the emulator's writers are stalled: the relay's queue
    fills, it stops reading, and the admin endpoint's writes block. Nothing is dropped: once
    the writers recover every trace lands."""
    count, body_bytes = 600, 40_000
    traces = [buffered_trace_json(index, body_bytes, SAMPLE_B3) for index in range(count)]
    written = 0

    async def script(attach: int, out: ChunkWriter) -> None:
        nonlocal written
        for trace in traces:
            await out.send(trace)
            written += 1

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    gate = tmp_path / "gate"
    emulator, target = await asyncio.to_thread(
        processes.emulator, output, "--queue-max-items", "4", entry=slow_server_entry(0.0, gate)
    )
    relay = processes.relay(
        url, target,
        "--queue-max-items", "1000", "--queue-max-bytes", str(1 << 20),
        "--max-traces", str(count),
        wait_attached=False,
    )  # fmt: skip
    # Stalled: the emulator's queue is full, so is the relay's, and Envoy's writes wait.
    await line(relay, "relay: queue full")
    assert await wait_until(lambda: queue_items(emulator) == 4)
    assert await wait_until(lambda: bool(admin.writers) and admin.writers[0].held_back)
    stalled_at = written
    peak_kib = memory_kib(relay.pid)

    assert stalled_at < count / 2, f"the admin endpoint wrote {stalled_at} of {count} traces"
    assert peak_kib < 100_000, f"relay peak RSS {peak_kib} KiB"  # measured: about 50 MB
    gate.touch()
    assert await stopped(relay) == 0, relay.log
    assert len(pb_files(output)) == count
    stats = totals(relay)
    assert (stats["confirmed"], stats["dropped"]) == (str(count), "0")
    assert int(stats["queue_full_waits"]) > 0
    await admin.close()
