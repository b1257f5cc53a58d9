"""What a first-time user meets at the command line: a port already taken, a misspelled
flag, and the traffic summary line (one per period while there is traffic, none when idle).
Each runs the real `tap-emulator serve` process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import raw_tap
from tests.helpers.emulator import wait_for
from tests.helpers.paths import REPO
from tests.helpers.raw_tap import send_stream

SERVE = [sys.executable, "-m", "tap_emulator", "serve"]
SUMMARY = "streams opened,"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve_once(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`serve` that is expected to refuse to start: its exit status and what it printed."""
    return subprocess.run(
        [*SERVE, "--output-dir", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_a_taken_tap_port_is_one_line_naming_the_port_and_the_flag(
    tmp_path: Path, taken_port: int
) -> None:
    done = serve_once(
        tmp_path, "--listen", f"127.0.0.1:{taken_port}", "--metrics-listen", "", "--ui-listen", ""
    )
    lines = done.stderr.strip().splitlines()
    print(f"observed: exit {done.returncode}; stderr {lines}")
    assert done.returncode == 2
    assert len(lines) == 1
    assert f"port {taken_port}" in lines[0] and "--listen" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_taken_metrics_port_is_one_line_naming_the_metrics_flag(
    tmp_path: Path, taken_port: int
) -> None:
    done = serve_once(
        tmp_path,
        "--listen", "127.0.0.1:0",
        "--metrics-listen", f"127.0.0.1:{taken_port}",
        "--ui-listen", "",
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    print(f"observed: exit {done.returncode}; stderr {lines}")
    assert done.returncode == 2
    assert len(lines) == 1
    assert f"port {taken_port}" in lines[0] and "--metrics-listen" in lines[0]
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr


def test_a_misspelled_serve_flag_gets_serves_usage_and_a_suggestion(tmp_path: Path) -> None:
    done = serve_once(tmp_path, "--lisen", "127.0.0.1:0")
    print(f"observed: exit {done.returncode}; stderr {done.stderr!r}")
    assert done.returncode == 2
    assert "usage: tap-emulator serve" in done.stderr
    assert "(did you mean --listen?)" in done.stderr
    assert "Traceback" not in done.stderr


def summary_lines(emulator: Any) -> list[str]:
    return [line for line in emulator.log_lines if SUMMARY in line]


def test_the_summary_line_reports_traffic_and_stays_quiet_when_idle(start_emulator: Any) -> None:
    period_seconds = 1
    emulator = start_emulator("--log-summary-seconds", str(period_seconds))
    trace = "5" * 32
    stream = [
        raw_tap.buffered("summary.ns:80", trace, n=n, first=n == 1, body_bytes=100)
        for n in range(1, 6)
    ]
    assert send_stream(emulator.tap, stream, 15).code == "OK"
    assert wait_for(lambda: summary_lines(emulator), 10 * period_seconds)
    first = summary_lines(emulator)[0]
    print(f"observed: {first!r}")
    assert "1 streams opened, 5 messages, 5 files" in first
    assert "0 dropped" in first and "queue 0 files" in first

    # The period after the traffic may still report its tail; after that, silence.
    time.sleep(2 * period_seconds)
    settled = len(summary_lines(emulator))
    time.sleep(3 * period_seconds)  # three idle periods: absence can only be observed over time
    later = len(summary_lines(emulator))
    print(f"observed: {settled} summary lines after the traffic, {later} three periods later")
    assert later == settled
