"""What an Envoy under test holds: its stats by name, its resident memory from /proc, and a
sampler that keeps the peak of both while a fault lasts."""

from __future__ import annotations

import re
import threading
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.chart_bootstrap import counters

MEMORY_ALLOCATED = "server.memory_allocated"


def stat(admin: str, name: str) -> int:
    """One counter or gauge of Envoy's admin /stats, 0 when Envoy has not created it yet."""
    return counters(admin, name).get(name, 0)


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found, f"no VmRSS for process {pid}"
    return int(found.group(1)) * 1024


@dataclass
class MemoryPeak:
    rss_bytes: int = 0
    allocated_bytes: int = 0
    samples: int = 0


class MemorySampler:
    """Samples Envoy's RSS and `server.memory_allocated` every `interval_seconds` until
    stopped; `peak` holds the largest of each."""

    def __init__(self, pid: int, admin: str, interval_seconds: float = 0.2) -> None:
        self.pid = pid
        self.admin = admin
        self.interval_seconds = interval_seconds
        self.peak = MemoryPeak()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.sample()
            self._stopped.wait(self.interval_seconds)

    def sample(self) -> None:
        try:
            allocated = stat(self.admin, MEMORY_ALLOCATED)
            rss = rss_bytes(self.pid)
        except (OSError, urllib.error.URLError, ValueError):
            return
        self.peak.rss_bytes = max(self.peak.rss_bytes, rss)
        self.peak.allocated_bytes = max(self.peak.allocated_bytes, allocated)
        self.peak.samples += 1
