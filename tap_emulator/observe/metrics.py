"""Observe: every metric the emulator exports, in one table, on its own registry.

Names follow Prometheus conventions: the `tap_emulator_` prefix, base units (`_seconds`,
`_bytes`), `_total` for counters. Label values come only from closed sets (trace kind,
direction, outcome, reason), never from headers, authorities or trace ids.

Hot-path counters are resolved to their label children once, at construction, so the ingest
and writer paths pay for an increment only. Depths and sizes that already live in other
objects (queue, correlation tables) are read at scrape time through callbacks.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

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
from tap_emulator.labels import (
    FALLBACK_KINDS,
    BodyHalf,
    Direction,
    ForwardDrop,
    ForwardState,
    RejectReason,
    Source,
    StreamOutcome,
    TraceKind,
    TransactionDrop,
    TransactionOutcome,
    WriteErrorReason,
)

PREFIX = "tap_emulator"

# `_created` series double the exposition and tell an operator nothing here. The switch is
# process-wide in prometheus-client, so it is thrown once, when this table is first imported.
disable_created_metrics()  # type: ignore[no-untyped-call]

TRACE_KINDS = tuple(TraceKind)
DIRECTIONS = tuple(Direction)
STREAM_OUTCOMES = tuple(StreamOutcome)
SOURCES = tuple(Source)
MESSAGE_REJECT_REASONS = tuple(
    reason
    for reason in RejectReason
    if reason not in (RejectReason.STREAM_LIMIT, RejectReason.PEER_LIMIT)
)
WRITE_ERROR_REASONS = tuple(WriteErrorReason)

# From 100 microseconds (a tmpfs publish on an idle server) to 10 seconds (a stalled disk).
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TableStats:
    """A bounded table's size and forgetting, read at scrape time."""

    entries: int
    evicted_capacity: int
    evicted_idle: int


class PageHandoff(Protocol):
    """The counts of the hand-off to the web page's process."""

    offered: int  # files offered to the page
    skipped: int  # of those, files it never got
    restarts: int  # times the page's process was started again after it ended


class _CallbackCollector(Collector):
    """Collects values owned by other objects (correlation tables) when scraped."""

    def __init__(self) -> None:
        self.tables: dict[str, Callable[[], TableStats]] = {}
        self.page: PageHandoff | None = None
        self.calls: tuple[Callable[[], int | None], Callable[[], int]] | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._tables()
        if self.page is not None:
            yield from self._page(self.page)
        if self.calls is not None:
            yield from self._calls(*self.calls)

    def _calls(
        self, started: Callable[[], int | None], handled: Callable[[], int]
    ) -> Iterator[Metric]:
        given = handled()
        yield CounterMetricFamily(
            f"{PREFIX}_grpc_calls_handled",
            "gRPC calls given to one of the emulator's handlers (tap and ext_proc streams, "
            "refused ones included, and health checks)",
            value=given,
        )
        core = started()
        if core is None:
            return
        yield CounterMetricFamily(
            f"{PREFIX}_grpc_calls_started",
            "gRPC calls the transport (gRPC core) started, whether or not a handler got them",
            value=core,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_grpc_calls_unhandled",
            "Calls started less calls handled: calls gRPC core ended before any handler was "
            "given them (it sheds load when the emulator is saturated: those ext_proc "
            "transactions are lost), plus calls to unknown methods and the few in flight",
            value=max(0, core - given),
        )

    def _page(self, page: PageHandoff) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"{PREFIX}_page_files_offered",
            "Published files handed to the web page's process",
            value=page.offered,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_page_files_skipped",
            "Published files the web page never got (its socket was full, or it was down): "
            "on disk all the same, missing from the page's live table",
            value=page.skipped,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_page_restarts",
            "Times the web page's process was started again after it ended",
            value=page.restarts,
        )

    def _tables(self) -> Iterator[Metric]:
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

        # --- streams ---------------------------------------------------------------------
        open_streams = Gauge(
            f"{PREFIX}_streams_open", "Streams open now, by source", ["source"], registry=r
        )
        self.streams_open = {s: open_streams.labels(s) for s in SOURCES}
        opened = Counter(
            f"{PREFIX}_streams_opened", "Streams accepted, by source", ["source"], registry=r
        )
        self.streams_opened = {s: opened.labels(s) for s in SOURCES}
        streams_ended = Counter(
            f"{PREFIX}_streams_ended",
            "Streams ended, by source and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.streams_ended = {
            (s, o): streams_ended.labels(s, o) for s in SOURCES for o in STREAM_OUTCOMES
        }
        refused = Counter(
            f"{PREFIX}_streams_refused",
            "Streams refused at their start because no slot was free (stream_limit) or the "
            "peer held its share (peer_limit), by source and reason",
            ["source", "reason"],
            registry=r,
        )
        self.streams_refused = {
            (s, reason): refused.labels(s, reason)
            for s in SOURCES
            for reason in (RejectReason.STREAM_LIMIT, RejectReason.PEER_LIMIT)
        }
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
            "Traces accepted (read off a stream; for ext_proc, one per transaction written "
            "whole or per streamed piece), by source, trace kind and direction",
            ["source", "kind", "direction"],
            registry=r,
        )
        self.messages_received = {
            (s, k, d): received.labels(s, k, d)
            for s in SOURCES
            for k in TRACE_KINDS
            for d in DIRECTIONS
        }
        received_bytes = Counter(
            f"{PREFIX}_received_bytes",
            "Bytes of accepted messages, by source",
            ["source"],
            registry=r,
        )
        self.received_bytes = {s: received_bytes.labels(s) for s in SOURCES}
        rejected = Counter(
            f"{PREFIX}_messages_rejected",
            "Messages refused, by source and reason (the stream ends with an error status)",
            ["source", "reason"],
            registry=r,
        )
        self.messages_rejected: dict[tuple[Source, RejectReason], Counter] = {
            (s, reason): rejected.labels(s, reason)
            for s in SOURCES
            for reason in MESSAGE_REJECT_REASONS
        }

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
            "Failed publish attempts of the disk as a whole (retried, or dropped with "
            "on_write_error: drop), by reason",
            ["reason"],
            registry=r,
        )
        self.write_errors = {reason: errors.labels(reason) for reason in WRITE_ERROR_REASONS}
        dropped = Counter(
            f"{PREFIX}_files_dropped",
            "Files given up: one the disk refused for its own sake (efbig, enametoolong), or any "
            "failed publish with on_write_error: drop; by reason",
            ["reason"],
            registry=r,
        )
        self.files_dropped = {reason: dropped.labels(reason) for reason in WRITE_ERROR_REASONS}
        delete_errors = Counter(
            f"{PREFIX}_retention_delete_errors",
            "Files retention could not delete (they are no longer counted against the caps), "
            "by reason",
            ["reason"],
            registry=r,
        )
        self.retention_delete_errors = {
            reason: delete_errors.labels(reason) for reason in WRITE_ERROR_REASONS
        }
        self.writer_restarts = Counter(
            f"{PREFIX}_writer_restarts",
            "Writer tasks that failed unexpectedly and were restarted",
            registry=r,
        )
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

        # --- ext_proc transactions --------------------------------------------------------
        written = Counter(
            f"{PREFIX}_extproc_transactions",
            "ext_proc transactions handed to the writers, by outcome (incomplete: the stream "
            "ended before the response's last part: an aborted transaction, or one Envoy gave up)",
            ["outcome"],
            registry=r,
        )
        self.extproc_transactions = {o: written.labels(o) for o in TransactionOutcome}
        dropped_transactions = Counter(
            f"{PREFIX}_extproc_transactions_dropped",
            "ext_proc transactions not written, by reason (the proxies are never held back)",
            ["reason"],
            registry=r,
        )
        self.extproc_dropped = {
            reason: dropped_transactions.labels(reason) for reason in TransactionDrop
        }
        truncated = Counter(
            f"{PREFIX}_extproc_bodies_truncated",
            "ext_proc bodies cut at their capture point's (or extproc_max_body_bytes') limit",
            ["half"],
            registry=r,
        )
        self.extproc_truncated = {half: truncated.labels(half) for half in BodyHalf}
        self.extproc_assembly_bytes = Gauge(
            f"{PREFIX}_extproc_assembly_bytes",
            "Body bytes held for ext_proc transactions still being assembled",
            registry=r,
        )
        self.extproc_assembly_capacity_bytes = Gauge(
            f"{PREFIX}_extproc_assembly_capacity_bytes",
            "Bound of the body bytes held for ext_proc transactions (extproc_assembly_max_bytes)",
            registry=r,
        )

        # --- forwarding to forward_to ---------------------------------------------------
        self.forwarded = Counter(
            f"{PREFIX}_forward_messages",
            "Traces written to the forward_to tool's StreamTaps streams",
            registry=r,
        )
        self.forwarded_bytes = Counter(
            f"{PREFIX}_forward_bytes",
            "Bytes of the StreamTapsRequests written to the forward_to tool",
            registry=r,
        )
        forward_dropped = Counter(
            f"{PREFIX}_forward_dropped",
            "Traces not forwarded, by reason (queue_full: the tool was slower than the mesh; "
            "disconnected: the queue filled while the tool was unreachable); the sources are "
            "never held back",
            ["reason"],
            registry=r,
        )
        self.forward_dropped = {reason: forward_dropped.labels(reason) for reason in ForwardDrop}
        self.forward_confirmed = Counter(
            f"{PREFIX}_forward_confirmed",
            "Forwarded traces on streams the tool ended with OK",
            registry=r,
        )
        self.forward_unconfirmed = Counter(
            f"{PREFIX}_forward_unconfirmed",
            "Forwarded traces on streams that then failed: the tool may or may not have them "
            "(never sent again)",
            registry=r,
        )
        self.forward_queue_items = Gauge(
            f"{PREFIX}_forward_queue_items", "Traces waiting to be forwarded", registry=r
        )
        self.forward_queue_bytes = Gauge(
            f"{PREFIX}_forward_queue_bytes",
            "Bytes of the traces waiting to be forwarded",
            registry=r,
        )
        self.forward_queue_capacity_items = Gauge(
            f"{PREFIX}_forward_queue_capacity_items",
            "Forward queue bound in traces (forward_queue_max_items; 0: forwarding off)",
            registry=r,
        )
        self.forward_queue_capacity_bytes = Gauge(
            f"{PREFIX}_forward_queue_capacity_bytes",
            "Forward queue bound in bytes (forward_queue_max_bytes; 0: forwarding off)",
            registry=r,
        )
        state = Gauge(
            f"{PREFIX}_forward_connection_state",
            "1 for the state the connection to forward_to is in, 0 for the others",
            ["state"],
            registry=r,
        )
        self.forward_state = {s: state.labels(s) for s in ForwardState}
        self.forward_streams_open = Gauge(
            f"{PREFIX}_forward_streams_open",
            "StreamTaps streams open to the forward_to tool (one per sender: node and tap id)",
            registry=r,
        )
        self.forward_streams_opened = Counter(
            f"{PREFIX}_forward_streams_opened",
            "StreamTaps streams opened to the forward_to tool (reconnects included)",
            registry=r,
        )

        # Calls the stream handlers were given (health checks count in GrpcHealth.calls).
        self.stream_calls = 0
        self._callbacks = _CallbackCollector()
        r.register(self._callbacks)

    def watch_table(self, name: str, read: Callable[[], TableStats]) -> None:
        """Export a correlation table's size and evictions, read at scrape time."""
        self._callbacks.tables[name] = read

    def watch_calls(self, started: Callable[[], int | None], handled: Callable[[], int]) -> None:
        """Export gRPC core's calls started against the calls the handlers were given."""
        self._callbacks.calls = (started, handled)

    def watch_page(self, page: PageHandoff) -> None:
        """Export what the web page was offered and what it missed, read at scrape time."""
        self._callbacks.page = page

    def watch_retention(self, size_bytes: Callable[[], float], files: Callable[[], float]) -> None:
        self.retained_bytes.set_function(size_bytes)
        self.retained_files.set_function(files)

    def watch_streams(self, open_streams: Callable[[Source], int]) -> None:
        """Export the streams open now, per source, read at scrape time."""
        for source, gauge in self.streams_open.items():
            gauge.set_function(functools.partial(open_streams, source))

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

    def watch_forward_queue(
        self,
        items: Callable[[], float],
        size_bytes: Callable[[], float],
        capacity_items: int,
        capacity_bytes: int,
    ) -> None:
        self.forward_queue_items.set_function(items)
        self.forward_queue_bytes.set_function(size_bytes)
        self.forward_queue_capacity_items.set(capacity_items)
        self.forward_queue_capacity_bytes.set(capacity_bytes)

    def forward_connection(self, now: ForwardState | None) -> None:
        """Show the connection to forward_to in state `now` (None: forwarding off)."""
        for state, gauge in self.forward_state.items():
            gauge.set(1 if state is now else 0)
