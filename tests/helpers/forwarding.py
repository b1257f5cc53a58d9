"""The pieces of the forwarding tests: an emulator A that forwards to a tool B (another
emulator, or the recording sink), what each holds, and A's forwarding metrics."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.emulator import EmulatorProcess, metric, published, scrape
from tests.helpers.harness import LoggedProcess
from tests.helpers.paths import HELPERS

Files = dict[str, bytes]
_NUMBERED = re.compile(r"^(?P<stem>.+)-(?P<seq>[0-9]+)\.pb$")


def forwarding(b: EmulatorProcess | RecordingSink | str, *args: str) -> list[str]:
    """`serve` flags that forward to `b` (an emulator, the recording sink, or HOST:PORT)."""
    target = b if isinstance(b, str) else b.tap
    return ["--forward-to", target, *args]


def forward_metrics(a: EmulatorProcess) -> dict[str, float]:
    """A's forwarding counters and gauges, by short name."""
    samples = scrape(a.metrics_url)
    shown = {
        name: metric(samples, f"tap_emulator_forward_{name}")
        for name in (
            "messages_total",
            "bytes_total",
            "dropped_total",
            "confirmed_total",
            "unconfirmed_total",
            "queue_items",
            "queue_bytes",
            "queue_capacity_items",
            "queue_capacity_bytes",
            "streams_open",
            "streams_opened_total",
        )
    }
    for reason in ("queue_full", "disconnected", "too_large", "stream_limit", "shutdown"):
        shown[f"dropped_{reason}"] = metric(
            samples, "tap_emulator_forward_dropped_total", reason=reason
        )
    for state in ("idle", "connecting", "ready", "transient_failure", "shutdown"):
        shown[f"state_{state}"] = metric(
            samples, "tap_emulator_forward_connection_state", state=state
        )
    shown["files_written_total"] = metric(samples, "tap_emulator_files_written_total")
    return shown


def held_by_both(a: Files, b: Files) -> bool:
    return bool(a) and a == b


def duplicates(files: Files) -> list[str]:
    """Names past sequence 1: with one file per trace id, a trace that arrived twice."""
    return sorted(n for n in files if (m := _NUMBERED.match(n)) and m["seq"] != "1")


def assert_b_holds_only_a_s_files(a: Files, b: Files) -> None:
    """Every file B wrote is one of A's, under A's name, byte for byte; none twice."""
    assert duplicates(b) == []
    strangers = sorted(set(b) - set(a))
    assert strangers == [], strangers[:5]
    different = sorted(name for name in b if b[name] != a[name])
    assert different == [], different[:5]


def wait_published(directory: Path, predicate: Callable[[Files], bool], timeout: float) -> Files:
    """The directory's files once `predicate` holds for them (fails with a count if not)."""
    from tests.helpers.emulator import wait_for

    seen: dict[str, Files] = {}

    def check() -> bool:
        seen["files"] = published(directory)
        return predicate(seen["files"])

    assert wait_for(check, timeout), f"{directory}: {len(seen['files'])} files"
    return seen["files"]


def stop_quietly(process: subprocess.Popen[str] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        process.kill()
        process.wait()


# --- the recording sink ------------------------------------------------------------------


@dataclass
class Record:
    stream: int
    index: int
    identifier: dict[str, Any] | None
    trace_id: int
    trace_sha256: str


class RecordingSink:
    """tests/helpers/recording_sink.py: a TapSinkService that writes down what it receives."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.process = LoggedProcess(
            "recording-sink",
            [sys.executable, str(HELPERS / "recording_sink.py"), str(record)],
            stdout_lines=True,
        )
        port = self.process.wait_for_line(r"^listening (\d+)$", timeout=20).group(1)
        self.tap = f"127.0.0.1:{port}"

    def records(self) -> list[Record]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [
            Record(
                item["stream"],
                item["index"],
                item["identifier"],
                int(item["trace_id"]),
                item["trace_sha256"],
            )
            for item in map(json.loads, lines)
        ]

    def streams(self) -> dict[int, list[Record]]:
        grouped: dict[int, list[Record]] = {}
        for record in self.records():
            grouped.setdefault(record.stream, []).append(record)
        return grouped

    def close(self) -> None:
        self.process.stop(timeout=10)
