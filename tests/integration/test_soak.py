"""Soak: steady load from several client processes, a server restart in the middle, zero
loss and flat memory.

Bounded for `make test` (about 2.5 minutes); `TAP_SOAK_SECONDS=1800` runs it longer.

Load: 4 soak_client.py processes (xds-protos) at 50 messages/s each, in calls of 100
messages (2 s, longer than the 1 s the server gives open streams at shutdown, so the restart
cuts calls half way) with unique trace ids. Half way through, the server gets SIGTERM and a
new one starts on the same directory and port; the clients resend every call that was not
answered OK (tests/helpers/soak_client.py), so the traffic is at least once. The output
directory is a tmpfs when one can be mounted (this machine's disk is noisy), else tmp_path.

"Nothing lost" is accounted like this:
1. each server run exits 0 and logs `accepted N messages, published N files`;
2. the files on disk are exactly N1 + N2 (one per accepted message), no temporaries;
3. no file of the first run was changed by the second (SHA-256 before and after);
4. numbering continued across the restart: each name stem has exactly the files 1..k;
5. every message the clients generated (each was finally answered OK) is on disk with its
   exact bytes, and nothing else is: a resend can only add copies of the same bytes;
6. copies (files minus distinct messages) are at most the messages sent in calls that were
   not answered OK.
Flat: after a warm-up in each run, the least-squares slope of RSS sampled every second is
under 5 MB/min and the open descriptor count varies by at most a few. The correlation
tables are capped at 2,000 entries (queue 1,000 files) so that they fill during the
warm-up: with unique trace ids their bounded growth is by design, not a leak.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.emulator import EmulatorProcess, metric, published, scrape
from tests.helpers.paths import HELPERS

SOAK_SECONDS = float(os.environ.get("TAP_SOAK_SECONDS", "120"))
CLIENTS = 4
RATE = 50  # messages per second per client
BATCH = 100  # messages per call
WARMUP_SECONDS = min(30.0, SOAK_SECONDS / 6)
MAX_SLOPE_MB_PER_MIN = 5.0
SERVER_FLAGS = ("--queue-max-items", "1000", "--correlation-max-entries", "2000")
_TOTALS = re.compile(r"accepted (\d+) messages, published (\d+) files")


class SoakClient:
    def __init__(self, target: str, client: int) -> None:
        spec = {
            "target": target,
            "client": client,
            "seconds": SOAK_SECONDS,
            "rate": RATE,
            "batch": BATCH,
        }
        self.process = subprocess.Popen(
            [sys.executable, str(HELPERS / "soak_client.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(json.dumps(spec),), daemon=True)
        self._thread.start()

    def _run(self, spec: str) -> None:
        out, err = self.process.communicate(spec)
        self._result = {"error": err} if self.process.returncode else json.loads(out)

    def result(self, timeout: float) -> dict[str, Any]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.process.kill()
            raise AssertionError("soak client did not finish")
        assert self._result is not None
        assert "error" not in self._result, self._result["error"]
        return self._result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


class ResourceSampler:
    """RSS (KiB) and open descriptors of a process, once a second, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))  # noqa: PTH208
            except (FileNotFoundError, ProcessLookupError):
                return
            rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
            self.samples.append((time.monotonic() - self._started, rss, fds))
            self._stop.wait(1.0)

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def slope_mb_per_minute(samples: list[tuple[float, int, int]]) -> float:
    """Least-squares slope of RSS over time."""
    count = len(samples)
    mean_t = sum(s[0] for s in samples) / count
    mean_r = sum(s[1] for s in samples) / count
    covariance = sum((s[0] - mean_t) * (s[1] - mean_r) for s in samples)
    variance = sum((s[0] - mean_t) ** 2 for s in samples)
    return covariance / variance * 60 / 1024


def settled(samples: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    after = [s for s in samples if s[0] >= WARMUP_SECONDS]
    assert len(after) >= 10, f"too few samples after warm-up: {samples}"
    return after


def totals(emulator: EmulatorProcess) -> tuple[int, int]:
    match = _TOTALS.search(emulator.log)
    assert match, emulator.log
    return int(match[1]), int(match[2])


def digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256(raw).hexdigest() for name, raw in published(directory).items()}


@pytest.fixture
def soak_dir(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "tmpfs"
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1g", "none", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"soak writes to {tmp_path}: cannot mount a tmpfs ({done.stderr.strip()})")
        yield tmp_path / "out"
        return
    try:
        yield point / "out"
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.slow
def test_soak_with_a_restart_loses_nothing_and_memory_stays_flat(
    start_emulator: Any, soak_dir: Path
) -> None:
    out = soak_dir
    first = start_emulator(*SERVER_FLAGS, output_dir=out)
    port = first.tap.rsplit(":", 1)[1]
    clients = [SoakClient(first.tap, client) for client in range(CLIENTS)]
    try:
        sampler = ResourceSampler(first.pid)
        time.sleep(SOAK_SECONDS / 2)
        first_samples = sampler.stop()
        assert first.stop() == 0
        accepted_1, published_1 = totals(first)
        before = digests(out)

        second = start_emulator(*SERVER_FLAGS, "--listen", f"127.0.0.1:{port}", output_dir=out)
        sampler = ResourceSampler(second.pid)
        results = [client.result(timeout=SOAK_SECONDS + 240) for client in clients]
        second_samples = sampler.stop()
        written_2 = metric(scrape(second.metrics_url), "tap_emulator_files_written_total")
        assert second.stop() == 0
        accepted_2, published_2 = totals(second)
    finally:
        for client in clients:
            client.kill()

    # 1-2: every accepted message is one file, nothing half-written.
    assert accepted_1 == published_1 > 0 and accepted_2 == published_2 > 0
    assert written_2 == published_2
    after = digests(out)
    assert len(after) == accepted_1 + accepted_2
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    # 3: nothing of the first run was overwritten.
    assert {name: after[name] for name in before} == before
    # 4-5: numbering continued, every generated message is there with its bytes, nothing else.
    expected = {tid: digest for result in results for tid, digest in result["digests"].items()}
    by_trace: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name, digest in after.items():
        match = re.fullmatch(r"soak\d+\.ns:80-([0-9a-f]{32})-(\d+)\.pb", name)
        assert match, name
        by_trace[match[1]].append((int(match[2]), digest))
    assert set(by_trace) == set(expected)
    for trace_id, found in by_trace.items():
        assert sorted(n for n, _ in found) == list(range(1, len(found) + 1)), trace_id
        assert {digest for _, digest in found} == {expected[trace_id]}, trace_id
    # 6: copies come only from calls that were resent.
    copies = len(after) - len(expected)
    resent = sum(result["messages_sent"] for result in results) - len(expected)
    assert 0 <= copies <= resent
    assert all(result["calls"] > 0 for result in results)

    # Flat memory and descriptors in each run, after its warm-up.
    report = []
    for run, samples in (("first", first_samples), ("second", second_samples)):
        steady = settled(samples)
        slope = slope_mb_per_minute(steady)
        rss = [s[1] for s in steady]
        fds = [s[2] for s in steady]
        report.append(
            f"{run}: {len(steady)} samples, RSS {min(rss)}..{max(rss)} KiB, "
            f"slope {slope:+.2f} MB/min, fds {min(fds)}..{max(fds)}"
        )
        assert slope < MAX_SLOPE_MB_PER_MIN, report
        # A leak grows; a client reconnecting after the restart moves the count for a moment.
        half = len(fds) // 2
        assert statistics.median(fds[half:]) - statistics.median(fds[:half]) <= 2, report
        assert max(fds) - min(fds) <= 8, report
    failures: dict[str, int] = defaultdict(int)
    for result in results:
        for code, count in result["failures"].items():
            failures[code] += count
    print(
        f"observed: {len(expected)} messages in {sum(r['calls'] for r in results)} calls, "
        f"{len(after)} files (accepted {accepted_1} + {accepted_2}), {copies} copies from "
        f"resent calls, failed attempts {dict(failures)}; " + "; ".join(report)
    )
