"""Clients for fault tests: paced HTTP/1.1 load at a fixed rate, and one large download whose
longest pause between reads is measured.

`PacedLoad` sends GETs on keep-alive connections (one per worker thread) at a fixed total
rate, each request at its scheduled time (a worker that falls behind sends at once), and
keeps what happened to every request: when it was sent, how long it took, its status or
error. `download` reads one response to the end and notes the longest gap between two reads:
a data path held back by the tap shows up there, not only in the total time.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent (monotonic), how long it took, what came back."""

    sent_at: float
    seconds: float
    status: int  # 0 when the request failed without a status
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.status == 200)

    @property
    def failures(self) -> Counter[str]:
        return Counter(o.error or str(o.status) for o in self.outcomes if o.status != 200)

    def latencies_seconds(self) -> list[float]:
        return sorted(o.seconds for o in self.outcomes if o.status == 200)

    def percentile_seconds(self, percent: float) -> float:
        latencies = self.latencies_seconds()
        assert latencies, "no successful request to take a percentile of"
        index = min(len(latencies) - 1, max(0, round(percent / 100 * len(latencies)) - 1))
        return latencies[index]

    def median_seconds(self) -> float:
        return statistics.median(self.latencies_seconds())

    def max_seconds(self) -> float:
        return max(o.seconds for o in self.outcomes)

    def summary(self) -> str:
        if not self.latencies_seconds():
            return f"{self.sent} sent, none succeeded: {dict(self.failures)}"
        return (
            f"{self.succeeded}/{self.sent} ok, p50 {self.median_seconds() * 1e3:.2f} ms, "
            f"p99 {self.percentile_seconds(99) * 1e3:.2f} ms, "
            f"max {self.max_seconds() * 1e3:.1f} ms, failures {dict(self.failures)}"
        )


class PacedLoad:
    """GETs of `path` at `rate_per_second` in all, over `connections` keep-alive connections,
    from `start()` until `stop()` (or for `duration_seconds`)."""

    def __init__(
        self,
        port: int,
        *,
        rate_per_second: float,
        path: str = "/",
        host: str = "service.demo-ns.svc.cluster.local",
        connections: int = 8,
        duration_seconds: float | None = None,
        timeout_seconds: float = 60.0,
    ) -> None:
        self.port = port
        self.path = path
        self.host = host
        self.interval_seconds = 1.0 / rate_per_second
        self.connections = connections
        self.duration_seconds = duration_seconds
        self.timeout_seconds = timeout_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._next = 0
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0

    def start(self) -> PacedLoad:
        self._started_at = time.monotonic()
        for _ in range(self.connections):
            thread = threading.Thread(target=self._work, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> LoadResult:
        self._stopped.set()
        return self.join()

    def join(self, timeout_seconds: float | None = None) -> LoadResult:
        deadline = time.monotonic() + (timeout_seconds or self.timeout_seconds + 30)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "load workers did not finish"
        with self._lock:
            self.result.outcomes.sort(key=lambda o: o.sent_at)
        return self.result

    def __enter__(self) -> PacedLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _scheduled(self) -> float | None:
        with self._lock:
            at = self._started_at + self._next * self.interval_seconds
            self._next += 1
        if self.duration_seconds is not None and at - self._started_at >= self.duration_seconds:
            return None
        return at

    def _work(self) -> None:
        connection: HTTPConnection | None = None
        while not self._stopped.is_set():
            at = self._scheduled()
            if at is None:
                break
            delay = at - time.monotonic()
            if delay > 0 and self._stopped.wait(delay):
                break
            if connection is None:
                connection = HTTPConnection(LOOPBACK, self.port, timeout=self.timeout_seconds)
            outcome = self._one(connection)
            if outcome.status == 0:
                connection.close()
                connection = None
            with self._lock:
                self.result.outcomes.append(outcome)
        if connection is not None:
            connection.close()

    def _one(self, connection: HTTPConnection) -> Outcome:
        sent_at = time.monotonic()
        try:
            connection.request("GET", self.path, headers={"host": self.host})
            response = connection.getresponse()
            response.read()
            return Outcome(sent_at, time.monotonic() - sent_at, response.status)
        except (OSError, HTTPException) as exc:
            return Outcome(sent_at, time.monotonic() - sent_at, 0, type(exc).__name__)


@dataclass(frozen=True)
class Download:
    status: int
    received_bytes: int
    seconds: float
    longest_gap_seconds: float  # longest time between two reads (or before the first)
    error: str = ""

    @property
    def mib_per_second(self) -> float:
        return self.received_bytes / (1024 * 1024) / max(self.seconds, 1e-9)


class BackgroundDownload:
    """One GET of `path` read to the end in a thread of its own; what has arrived so far, and
    when the last read returned, can be looked at while it runs."""

    def __init__(
        self,
        port: int,
        path: str,
        *,
        host: str = "service.demo-ns.svc.cluster.local",
        timeout_seconds: float = 120.0,
    ) -> None:
        self.port = port
        self.path = path
        self.host = host
        self.timeout_seconds = timeout_seconds
        self.received_bytes = 0
        self.last_read_at = time.monotonic()
        self.result: Download | None = None
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BackgroundDownload:
        self._thread.start()
        return self

    def wait_for_bytes(self, count: int, timeout_seconds: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        with self._progress:
            while self.received_bytes < count and self.result is None:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"only {self.received_bytes} of {count} bytes arrived"
                self._progress.wait(remaining)
        assert self.received_bytes >= count, f"download ended early: {self.result}"

    def seconds_since_last_read(self) -> float:
        with self._progress:
            return time.monotonic() - self.last_read_at

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout_seconds: float | None = None) -> Download:
        self._thread.join(timeout_seconds)
        assert self.result is not None, (
            f"download still running: {self.received_bytes} bytes so far, last read "
            f"{self.seconds_since_last_read():.1f} s ago"
        )
        return self.result

    def _read(self, received: int) -> None:
        with self._progress:
            self.received_bytes = received
            self.last_read_at = time.monotonic()
            self._progress.notify_all()

    def _run(self) -> None:
        connection = HTTPConnection(LOOPBACK, self.port, timeout=self.timeout_seconds)
        started = last = time.monotonic()
        longest = 0.0
        received = 0
        status = 0
        error = ""
        try:
            connection.request("GET", self.path, headers={"host": self.host})
            response = connection.getresponse()
            status = response.status
            while True:
                piece = response.read1(1024 * 1024)
                now = time.monotonic()
                longest = max(longest, now - last)
                last = now
                if not piece:
                    break
                received += len(piece)
                self._read(received)
        except (OSError, HTTPException) as exc:
            longest = max(longest, time.monotonic() - last)
            error = type(exc).__name__
        finally:
            connection.close()
        with self._progress:
            self.result = Download(status, received, time.monotonic() - started, longest, error)
            self._progress.notify_all()


def download(
    port: int,
    path: str,
    *,
    host: str = "service.demo-ns.svc.cluster.local",
    timeout_seconds: float = 120.0,
) -> Download:
    """GET `path` and read it to the end."""
    return BackgroundDownload(port, path, host=host, timeout_seconds=timeout_seconds).start().join()
