"""Forwarding when the tool is away, dies or stalls: A keeps ingesting and writing, its forward
queue stays within its bound and counts what gives way, and once the tool is back forwarding
resumes; no trace reaches the tool twice.

The load is tap_client.py's generated traces: each has a trace id of its own, so every file is
`<authority>-<traceId>-1.pb`, B names what it gets as A did, and a `-2.pb` in B would be a trace
forwarded twice (B keeps counting past the files already on disk after a restart, too).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.emulator import EmulatorFactory, EmulatorProcess, published, wait_for
from tests.helpers.forwarding import (
    assert_b_holds_only_a_s_files,
    duplicates,
    forward_metrics,
    forwarding,
    wait_published,
)
from tests.helpers.harness import free_port
from tests.helpers.script_run import TapClientRun

pytestmark = pytest.mark.slow

QUEUE_ITEMS = 300
BODY_BYTES = 600
LANES = ("load-inbound", "load-outbound")  # two senders: two streams to the tool
# tap_client.py's node is in namespace `ns`: outbound files are named by it.
OUTBOUND_PREFIX = "ns"


def names(authority: str, prefix: str, count: int) -> list[str]:
    return [f"{authority}-{prefix}{n:016x}-1.pb" for n in range(count)]


def generated(
    authority: str, prefix: str, tap_id: str, *, count: int | None = None, until: Path | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "authority": authority,
        "trace_prefix": prefix,
        "tap_id": tap_id,
        "body_bytes": BODY_BYTES,
    }
    if count is not None:
        spec["count"] = count
    if until is not None:
        spec["until_file"] = str(until)
    return {"generate": spec, "no_traces": True}


class Load:
    """Generated traces into A on two senders' streams until `stop()`, as fast as A takes
    them (or `count` per stream)."""

    def __init__(self, a: EmulatorProcess, tag: str, stop_file: Path, count: int | None = None):
        self.stop_file = stop_file
        self.authorities = [f"{tag}{i}.ns:80" for i in range(len(LANES))]
        self.file_prefixes = [
            authority if tap_id.endswith("inbound") else OUTBOUND_PREFIX
            for authority, tap_id in zip(self.authorities, LANES, strict=True)
        ]
        self.prefix = hashlib.sha256(tag.encode()).hexdigest()[:16]
        until = None if count is not None else stop_file
        self.run = TapClientRun(
            {
                "target": a.tap,
                "timeout": 300,
                "streams": [
                    generated(authority, self.prefix, tap_id, count=count, until=until)
                    for authority, tap_id in zip(self.authorities, LANES, strict=True)
                ],
            }
        )

    def stop(self) -> list[dict[str, Any]]:
        self.stop_file.touch()
        results = self.run.streams(timeout=120)
        assert [r["code"] for r in results] == ["OK"] * len(LANES), results
        return results

    def names(self, results: list[dict[str, Any]]) -> list[list[str]]:
        """Each stream's file names, in the order sent: inbound by the authority, outbound by
        the client's namespace."""
        return [
            names(
                authority if tap_id.endswith("inbound") else OUTBOUND_PREFIX,
                self.prefix,
                result["sent"],
            )
            for authority, tap_id, result in zip(self.authorities, LANES, results, strict=True)
        ]


@pytest.fixture
def a_factory(start_emulator: EmulatorFactory, tmp_path: Path) -> Any:
    def start(target: str, *args: str) -> EmulatorProcess:
        return start_emulator(
            *forwarding(target, "--forward-queue-max-items", str(QUEUE_ITEMS), *args),
            output_dir=tmp_path / "a",
        )

    return start


@pytest.fixture
def stopped_b() -> Iterator[list[int]]:
    """Pids a test SIGSTOPs: continued at the end, whatever happened, so they can be ended."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def quiet(a: EmulatorProcess) -> bool:
    """A has nothing left to forward and every stream's traces are out."""
    shown = forward_metrics(a)
    return shown["queue_items"] == 0 and shown["state_ready"] == 1


# --- B absent at start -----------------------------------------------------------------------


def test_with_b_absent_at_start_a_writes_everything_keeps_the_newest_and_sends_them_later(
    a_factory: Any, start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    port = free_port()
    a = a_factory(f"127.0.0.1:{port}")
    early = Load(a, "early", tmp_path / "early-stop", count=2000)
    early_results = early.stop()

    a_files = published(a.output_dir)
    assert len(a_files) == 2 * 2000  # A wrote everything, the tool away

    # The forwarding process reports its counts about once a second: wait until they cover
    # every trace handed over (queued, held by a lane, or dropped).
    def accounted() -> bool:
        shown = forward_metrics(a)
        held = shown["queue_items"] + len(LANES)
        return shown["dropped_disconnected"] + held >= 2 * 2000

    assert wait_for(accounted, 10)
    shown = forward_metrics(a)
    assert shown["messages_total"] == 0
    assert shown["queue_items"] == QUEUE_ITEMS  # bounded
    lost = shown["dropped_disconnected"]
    assert lost == 2 * 2000 - QUEUE_ITEMS - len(LANES)  # each lane holds one, waiting to go
    assert shown["dropped_queue_full"] == 0

    b = start_emulator("--listen", f"127.0.0.1:{port}", output_dir=tmp_path / "b")
    assert wait_for(lambda: quiet(a), 30)  # connected, and what was queued has gone
    late = Load(a, "late", tmp_path / "late-stop", count=100)  # fits in the queue at once
    late_names = [n for stream in late.names(late.stop()) for n in stream]
    a_files = published(a.output_dir)
    b_files = wait_published(b.output_dir, lambda files: set(late_names) <= set(files), 30)
    assert wait_for(lambda: quiet(a), 10)
    b_files = published(b.output_dir)

    assert_b_holds_only_a_s_files(a_files, b_files)
    assert len(b_files) == QUEUE_ITEMS + len(LANES) + len(late_names)
    # drop_oldest: of what came while B was away, B got each lane's first trace (waiting on
    # its stream) and the newest ones the queue held, none from the middle.
    early_in_b = [n for n in b_files if early.prefix in n]
    kept_from_end = sum(
        1 for stream in early.names(early_results) for name in stream[1:] if name in b_files
    )
    for stream in early.names(early_results):
        assert stream[0] in b_files
        held = [name in b_files for name in stream[1:]]
        assert held == sorted(held), "B holds a lane's newest traces, never a gap before them"
    assert kept_from_end == QUEUE_ITEMS
    assert len(early_in_b) == QUEUE_ITEMS + len(LANES)


# --- B killed and restarted ------------------------------------------------------------------


def test_b_killed_and_restarted_mid_load_costs_a_nothing_and_forwarding_resumes(
    a_factory: Any, start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    port = free_port()
    b_dir = tmp_path / "b"
    b = start_emulator("--listen", f"127.0.0.1:{port}", output_dir=b_dir)
    a = a_factory(b.tap)
    load = Load(a, "kill", tmp_path / "kill-stop")

    wait_published(b_dir, lambda files: len(files) >= 500, 30)
    b.kill()  # SIGKILL: whatever B had read but not written is gone
    assert wait_for(lambda: forward_metrics(a)["state_ready"] == 0, 20)
    written_at_kill = forward_metrics(a)["files_written_total"]
    assert wait_for(lambda: forward_metrics(a)["dropped_disconnected"] > 0, 30)
    # A keeps writing what it accepts, B dead.
    assert wait_for(lambda: forward_metrics(a)["files_written_total"] > written_at_kill + 1000)
    assert forward_metrics(a)["queue_items"] <= QUEUE_ITEMS

    forwarded_at_restart = forward_metrics(a)["messages_total"]
    start_emulator("--listen", f"127.0.0.1:{port}", output_dir=b_dir)
    assert wait_for(lambda: forward_metrics(a)["messages_total"] > forwarded_at_restart + 1000, 30)
    results = load.stop()
    sent = [n for stream in load.names(results) for n in stream]
    a_files = published(a.output_dir)
    assert set(sent) <= set(a_files)  # every trace A accepted is on A's disk
    # After the restart everything goes through again, up to each stream's last trace.
    last = {stream[-1] for stream in load.names(results)}
    wait_published(b_dir, lambda files: last <= set(files), 30)
    assert wait_for(lambda: quiet(a), 20)
    b_files = published(b_dir)

    assert_b_holds_only_a_s_files(a_files, b_files)
    shown = forward_metrics(a)
    assert shown["unconfirmed_total"] > 0  # written on the streams B's death cut
    assert shown["streams_opened_total"] >= 2 * len(LANES)
    assert shown["streams_open"] == len(LANES)


# --- B stalled -------------------------------------------------------------------------------


def files_per_second(a: EmulatorProcess, tmp_path: Path, tag: str, seconds: float) -> float:
    """A's files/s under closed-loop load for `seconds` (its own counter, over the window)."""
    at_start = forward_metrics(a)["files_written_total"]
    load = Load(a, tag, tmp_path / f"{tag}-stop")
    # The window opens once this load's files are being written.
    assert wait_for(lambda: forward_metrics(a)["files_written_total"] > at_start + 500, 30)
    before, started = forward_metrics(a)["files_written_total"], time.monotonic()
    peak_queue = 0.0
    deadline = started + seconds
    while time.monotonic() < deadline:
        peak_queue = max(peak_queue, forward_metrics(a)["queue_items"])
        time.sleep(0.2)  # sampling the queue's depth while the load runs
    after, ended = forward_metrics(a)["files_written_total"], time.monotonic()
    load.stop()
    assert peak_queue <= QUEUE_ITEMS
    return (after - before) / (ended - started)


def test_b_stalled_costs_a_nothing_its_queue_stays_bounded_and_forwarding_resumes(
    a_factory: Any,
    start_emulator: EmulatorFactory,
    tmp_path: Path,
    stopped_b: list[int],
) -> None:
    b = start_emulator(output_dir=tmp_path / "b")
    a = a_factory(b.tap)

    files_per_second(a, tmp_path, "warm-up", 2.0)  # A's writers settle into their mode first
    healthy = files_per_second(a, tmp_path, "healthy", 4.0)
    assert wait_for(lambda: quiet(a), 20)
    os.kill(b.pid, signal.SIGSTOP)
    stopped_b.append(b.pid)
    stalled = files_per_second(a, tmp_path, "stalled", 4.0)
    shown = forward_metrics(a)
    print(f"A's files/s: B healthy {healthy:.0f}, B stalled {stalled:.0f}")

    # Generous: the two windows share two cores with other work; what matters is that a
    # stalled tool does not throttle A (it would drop to ~0 if A waited for it).
    assert stalled >= 0.5 * healthy
    assert shown["queue_items"] <= QUEUE_ITEMS
    assert shown["dropped_queue_full"] > 0  # connected but not reading: the tool is slow
    assert shown["state_ready"] == 1

    os.kill(b.pid, signal.SIGCONT)
    stopped_b.remove(b.pid)
    after = Load(a, "after", tmp_path / "after-stop", count=100)
    after_names = [n for stream in after.names(after.stop()) for n in stream]
    wait_published(b.output_dir, lambda files: set(after_names) <= set(files), 30)
    assert wait_for(lambda: quiet(a), 20)
    a_files, b_files = published(a.output_dir), published(b.output_dir)
    assert_b_holds_only_a_s_files(a_files, b_files)
    assert duplicates(b_files) == []


# --- the forwarding process dies -------------------------------------------------------------


def forwarding_process(a: EmulatorProcess) -> int | None:
    """The pid of A's forwarding process, if it runs."""
    children: list[str] = []
    for task in Path(f"/proc/{a.pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += (task / "children").read_text().split()
    for pid in children:
        with contextlib.suppress(OSError):
            if b"tap_emulator.forward.child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
    return None


def test_the_forwarding_process_killed_is_started_again_and_a_never_stops_writing(
    a_factory: Any, start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    b = start_emulator(output_dir=tmp_path / "b")
    a = a_factory(b.tap)
    load = Load(a, "child", tmp_path / "child-stop")
    wait_published(b.output_dir, lambda files: len(files) >= 300, 30)
    first = forwarding_process(a)
    assert first is not None

    os.kill(first, signal.SIGKILL)
    written_at_kill = forward_metrics(a)["files_written_total"]
    assert wait_for(lambda: forwarding_process(a) not in (None, first), 20), a.log[-2000:]
    forwarded_at_restart = forward_metrics(a)["messages_total"]
    assert wait_for(lambda: forward_metrics(a)["messages_total"] > forwarded_at_restart + 500)
    assert forward_metrics(a)["files_written_total"] > written_at_kill
    results = load.stop()

    last = {stream[-1] for stream in load.names(results)}
    wait_published(b.output_dir, lambda files: last <= set(files), 30)
    assert wait_for(lambda: quiet(a), 20)
    a_files, b_files = published(a.output_dir), published(b.output_dir)
    assert {n for stream in load.names(results) for n in stream} <= set(a_files)
    assert_b_holds_only_a_s_files(a_files, b_files)
    assert "the forwarding process ended unexpectedly" in a.log
