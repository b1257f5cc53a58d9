"""Observe: every metric the emulator exports, in one table, on its own registry.

Names follow Prometheus conventions: the `tap_emulator_` prefix, base units (`_seconds`,
`_bytes`), `_total` for counters. Label values come only from closed sets (trace kind,
direction, outcome, reason), never from headers, authorities or trace ids.

Hot-path counters are resolved to their label children once, at construction, so the ingest
and writer paths pay for an increment only. Depths and sizes that already live in other
objects (queue, correlation tables) are read at scrape time through callbacks.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tap_emulator import __version__

PREFIX = "tap_emulator"

TRACE_KINDS = ("buffered", "streamed_segment", "socket", "other", "none")
DIRECTIONS = ("inbound", "outbound")
STREAM_OUTCOMES = (
    "ok",
    "cancelled",
    "invalid_argument",
    "resource_exhausted",
    "internal",
    "shutdown",
    "idle",
)
REJECT_REASONS = ("decode", "too_large")
WRITE_ERROR_REASONS = ("enospc", "edquot", "efbig", "eio", "erofs", "eacces", "other")
FALLBACK_KINDS = ("socket", "other")

# From 100 microseconds (a tmpfs publish on an idle server) to 10 seconds (a stalled disk).
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ThrottledLog:
    """Warnings about things that can repeat per message (refused input), at most one line
    per reason per `period_seconds`, with the number left unsaid since the last line."""

    def __init__(self, logger: logging.Logger, period_seconds: float = 10.0) -> None:
        self._logger = logger
        self._period = period_seconds
        self._last: dict[str, float] = {}
        self._unsaid: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._period:
            self._unsaid[reason] = self._unsaid.get(reason, 0) + 1
            return
        self._last[reason] = now
        unsaid = self._unsaid.pop(reason, 0)
        suffix = f" ({unsaid} more like this not logged)" if unsaid else ""
        self._logger.warning(message + suffix, *args)


@dataclass(frozen=True, slots=True)
class TableStats:
    """A bounded table's size and forgetting, read at scrape time."""

    entries: int
    evicted_capacity: int
    evicted_idle: int


class _CallbackCollector(Collector):
    """Collects values owned by other objects (correlation tables) when scraped."""

    def __init__(self) -> None:
        self.tables: dict[str, Callable[[], TableStats]] = {}

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            f"{PREFIX}_correlation_entries",
            "Entries held in a bounded correlation table",
            labels=["table"],
        )
        evictions = CounterMetricFamily(
            f"{PREFIX}_correlation_evictions",
            "Entries a correlation table forgot before their trace ended, by reason",
            labels=["table", "reason"],
        )
        for table, read in sorted(self.tables.items()):
            stats = read()
            entries.add_metric([table], stats.entries)
            evictions.add_metric([table, "capacity"], stats.evicted_capacity)
            evictions.add_metric([table, "idle"], stats.evicted_idle)
        yield entries
        yield evictions

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    """The emulator's metric table; one per server, each on its own registry."""

    def __init__(self, transport: str = "grpcio") -> None:
        # `_created` series double the exposition and tell an operator nothing here.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        Info(f"{PREFIX}_build", "Version and runtime of this emulator", registry=r).info(
            {
                "version": __version__,
                "transport": transport,
                "python": platform.python_version(),
            }
        )

        # --- streams -------------------------------------------------------------------
        self.streams_open = Gauge(f"{PREFIX}_streams_open", "StreamTaps calls open now", registry=r)
        self.streams_opened = Counter(
            f"{PREFIX}_streams_opened", "StreamTaps calls accepted", registry=r
        )
        streams_ended = Counter(
            f"{PREFIX}_streams_ended",
            "StreamTaps calls ended, by outcome",
            ["outcome"],
            registry=r,
        )
        self.streams_ended = {o: streams_ended.labels(o) for o in STREAM_OUTCOMES}
        unknown = Counter(
            f"{PREFIX}_streams_unknown_direction",
            "Streams whose tap_id named no direction and took the default",
            registry=r,
        )
        self.streams_unknown_direction = unknown
        self.streams_without_identifier = Counter(
            f"{PREFIX}_streams_without_identifier",
            "Streams whose first message had no identifier (named with defaults)",
            registry=r,
        )

        # --- messages ------------------------------------------------------------------
        received = Counter(
            f"{PREFIX}_messages_received",
            "StreamTapsRequest messages accepted (read off a stream), by trace kind and direction",
            ["kind", "direction"],
            registry=r,
        )
        self.messages_received = {
            (k, d): received.labels(k, d) for k in TRACE_KINDS for d in DIRECTIONS
        }
        self.received_bytes = Counter(
            f"{PREFIX}_received_bytes", "Bytes of accepted messages", registry=r
        )
        rejected = Counter(
            f"{PREFIX}_messages_rejected",
            "Messages refused, by reason (the stream ends with an error status)",
            ["reason"],
            registry=r,
        )
        self.messages_rejected = {reason: rejected.labels(reason) for reason in REJECT_REASONS}

        # --- naming --------------------------------------------------------------------
        self.names_sanitized = Counter(
            f"{PREFIX}_names_sanitized",
            "File names in which unsafe characters were replaced",
            registry=r,
        )
        self.names_truncated = Counter(
            f"{PREFIX}_names_truncated",
            "File names whose over-long components were cut and hash-tagged",
            registry=r,
        )
        fallback = Counter(
            f"{PREFIX}_fallback_names",
            "Files written under a fallback name (socket traces, unrecognised traces)",
            ["kind"],
            registry=r,
        )
        self.fallback_names = {k: fallback.labels(k) for k in FALLBACK_KINDS}
        self.redactions = Counter(
            f"{PREFIX}_redactions", "Header values replaced by redaction", registry=r
        )

        # --- writing -------------------------------------------------------------------
        self.files_written = Counter(
            f"{PREFIX}_files_written", "Files published in the output directory", registry=r
        )
        self.written_bytes = Counter(
            f"{PREFIX}_written_bytes", "Bytes of published files", registry=r
        )
        errors = Counter(
            f"{PREFIX}_write_errors",
            "Failed publish attempts (each is retried), by reason",
            ["reason"],
            registry=r,
        )
        self.write_errors = {reason: errors.labels(reason) for reason in WRITE_ERROR_REASONS}
        dropped = Counter(
            f"{PREFIX}_files_dropped",
            "Files given up after a failed publish (only with on_write_error: drop), by reason",
            ["reason"],
            registry=r,
        )
        self.files_dropped = {reason: dropped.labels(reason) for reason in WRITE_ERROR_REASONS}
        self.sequence_collisions = Counter(
            f"{PREFIX}_sequence_collisions",
            "Publishes that found their name taken on disk and moved to the next free number",
            registry=r,
        )
        self.publish_latency = Histogram(
            f"{PREFIX}_publish_latency_seconds",
            "Time from a message's arrival to its file's publication",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.backpressure = Counter(
            f"{PREFIX}_backpressure_seconds",
            "Time stream handlers spent waiting for room in the writer queue",
            registry=r,
        )
        self.queue_items = Gauge(
            f"{PREFIX}_queue_items", "Files queued or being written", registry=r
        )
        self.queue_bytes = Gauge(
            f"{PREFIX}_queue_bytes", "Bytes queued or being written", registry=r
        )
        self.queue_capacity_items = Gauge(
            f"{PREFIX}_queue_capacity_items", "Writer queue bound in files", registry=r
        )
        self.queue_capacity_bytes = Gauge(
            f"{PREFIX}_queue_capacity_bytes", "Writer queue bound in bytes", registry=r
        )

        self.files_deleted = Counter(
            f"{PREFIX}_files_deleted",
            "Oldest files deleted to keep the output directory within its retention caps",
            registry=r,
        )
        self.retained_bytes = Gauge(
            f"{PREFIX}_retained_bytes",
            "Bytes of the emulator's files in the output directory (when retention is on)",
            registry=r,
        )
        self.retained_files = Gauge(
            f"{PREFIX}_retained_files",
            "The emulator's files in the output directory (when retention is on)",
            registry=r,
        )

        self._callbacks = _CallbackCollector()
        r.register(self._callbacks)

    def watch_table(self, name: str, read: Callable[[], TableStats]) -> None:
        """Export a correlation table's size and evictions, read at scrape time."""
        self._callbacks.tables[name] = read

    def watch_retention(self, size_bytes: Callable[[], float], files: Callable[[], float]) -> None:
        self.retained_bytes.set_function(size_bytes)
        self.retained_files.set_function(files)

    def watch_queue(
        self,
        items: Callable[[], float],
        size_bytes: Callable[[], float],
        capacity_items: int,
        capacity_bytes: int,
    ) -> None:
        self.queue_items.set_function(items)
        self.queue_bytes.set_function(size_bytes)
        self.queue_capacity_items.set(capacity_items)
        self.queue_capacity_bytes.set(capacity_bytes)
