"""The composition root: `build` turns the settings into an `Emulator`, every part made and
wired (sources, deriver, writers or none, the page's and the forwarder's links, readiness),
nothing started yet. With `output_dir: ''` there are no writers and no page: a pure bridge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from tap_emulator.app.grpc_options import read_setting_file
from tap_emulator.config import Settings
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter
from tap_emulator.derive.deriver import Deriver, NamingPolicy
from tap_emulator.forward.child import ChildOptions
from tap_emulator.forward.forwarder import ForwardOptions
from tap_emulator.forward.link import ForwardLink
from tap_emulator.ingest.extproc import SERVICE as EXTPROC_SERVICE
from tap_emulator.ingest.extproc import ExtProcessor, ExtProcLimits
from tap_emulator.ingest.handoff import Handoff
from tap_emulator.ingest.streams import StreamLimits, StreamRegistry
from tap_emulator.ingest.tapsink import SERVICE as TAP_SERVICE
from tap_emulator.ingest.tapsink import TapSink, TapSinkLimits
from tap_emulator.ingest.wire_budget import WireBudget
from tap_emulator.labels import Source
from tap_emulator.observe.grpc_calls import core_calls_started
from tap_emulator.observe.health import GrpcHealth, HttpEndpoint, Readiness
from tap_emulator.observe.metrics import Metrics, TableStats
from tap_emulator.web.link import PageProcess
from tap_emulator.web.status import emulator_status
from tap_emulator.write.directory import DirectoryPublisher
from tap_emulator.write.numbering import Numbering
from tap_emulator.write.pool import WriterOptions, WriterPool
from tap_emulator.write.publisher import Publisher
from tap_emulator.write.queue import WriteQueue
from tap_emulator.write.retention import RetentionLedger, RetentionPolicy
from tap_emulator.write.watch import OutputWatch


def build_forwarder(settings: Settings, metrics: Metrics) -> ForwardLink | None:
    """The link to the forwarding process (forward_to), or None; its TLS files must be
    readable now, so that a bad path stops the emulator at start with the setting's name."""
    if not settings.forward_to:
        return None
    files = {
        "forward_tls_ca_file": settings.forward_tls_ca_file,
        "forward_tls_cert_file": settings.forward_tls_cert_file,
        "forward_tls_key_file": settings.forward_tls_key_file,
    }
    for name, path in files.items():
        if path is not None:
            read_setting_file(name, path)
    forward = ForwardOptions(
        target=settings.forward_to,
        queue_max_items=settings.forward_queue_max_items,
        queue_max_bytes=settings.forward_queue_max_bytes,
        when_full=settings.forward_when_full,
        max_message_bytes=settings.forward_max_message_bytes,
        max_streams=settings.forward_max_streams,
    )
    child = ChildOptions(
        forward=forward,
        fd=-1,  # the link passes the socket it creates
        tls_ca_file=_shown(settings.forward_tls_ca_file),
        tls_cert_file=_shown(settings.forward_tls_cert_file),
        tls_key_file=_shown(settings.forward_tls_key_file),
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    return ForwardLink(child, metrics)


def _shown(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


@dataclass
class Emulator:
    """Everything `serve` runs, wired together; built by `build`, run by `serve`. Without an
    output directory (a pure bridge) there is no publisher, pool or watch."""

    settings: Settings
    metrics: Metrics
    queue: WriteQueue
    publisher: Publisher | None
    pool: WriterPool | None
    watch: OutputWatch | None
    ledger: RetentionLedger | None
    registry: StreamRegistry
    sink: TapSink
    processor: ExtProcessor
    readiness: Readiness
    grpc_health: GrpcHealth
    http: HttpEndpoint
    page: PageProcess | None = None  # the web page's process, when ui_listen is set
    forwarder: ForwardLink | None = None  # the forwarding process, when forward_to is set
    server: grpc.aio.Server | None = None
    tap_address: tuple[str, int] | None = None
    metrics_address: tuple[str, int] | None = None
    ui_address: tuple[str, int] | None = None

    @property
    def unpublished(self) -> int:
        return self.queue.unpublished


def build_deriver(settings: Settings, metrics: Metrics | None = None) -> Deriver:
    """Derive as `serve` runs it (also used by the fuzz targets, so they test the real thing)."""
    sequences = SequenceCounter(settings.correlation_max_entries, settings.correlation_idle_seconds)
    segments = SegmentNames(settings.correlation_max_entries, settings.correlation_idle_seconds)
    if metrics is not None:
        metrics.watch_table(
            "sequences",
            lambda: TableStats(
                len(sequences), sequences.evictions.capacity, sequences.evictions.idle
            ),
        )
        metrics.watch_table(
            "segments",
            lambda: TableStats(len(segments), segments.evictions.capacity, segments.evictions.idle),
        )
    policy = NamingPolicy(
        name_format=settings.name_format,
        trace_id_headers=settings.trace_id_headers,
        redact_headers=frozenset(settings.redact_headers),
        default_direction=settings.default_direction,
    )
    return Deriver(policy, sequences, segments)


def build(settings: Settings, publisher: Publisher | None = None) -> Emulator:
    """Wire every part; `publisher` replaces the output directory (tests inject faults)."""
    metrics = Metrics()
    queue = WriteQueue(settings.queue_max_items, settings.queue_max_bytes, metrics.backpressure.inc)
    metrics.watch_queue(
        lambda: queue.items, lambda: queue.size_bytes, queue.max_items, queue.max_bytes
    )
    writing = settings.output_dir is not None or publisher is not None
    pool = watch = ledger = None
    if writing:
        publisher, pool, ledger = _build_writers(settings, metrics, queue, publisher)
        watch = OutputWatch(publisher)
    registry = StreamRegistry(
        {
            Source.TAP: StreamLimits(
                settings.max_concurrent_streams,
                settings.max_streams_per_peer,
                settings.stream_idle_timeout_seconds,
            ),
            Source.EXT_PROC: StreamLimits(
                settings.extproc_max_concurrent_streams,
                settings.extproc_max_streams_per_peer,
                settings.stream_idle_timeout_seconds,
                ("extproc_max_concurrent_streams", "extproc_max_streams_per_peer"),
            ),
        }
    )
    metrics.watch_streams(registry.open_streams)
    forwarder = build_forwarder(settings, metrics)
    handoff = Handoff(
        build_deriver(settings, metrics),
        metrics,
        forwarder.offer if forwarder is not None else None,
        write=writing,
    )
    budget = WireBudget(max_repeated_elements=settings.max_headers_per_message)
    sink = TapSink(
        handoff,
        queue,
        registry,
        metrics,
        settings.default_direction,
        TapSinkLimits(settings.max_message_bytes, settings.stream_idle_timeout_seconds, budget),
    )
    processor = ExtProcessor(
        handoff,
        queue,
        registry,
        metrics,
        settings.default_direction,
        ExtProcLimits(
            settings.max_message_bytes,
            settings.extproc_max_body_bytes,
            settings.extproc_assembly_max_bytes,
            budget,
        ),
    )
    checks: list[Callable[[], str | None]] = [registry.full]
    if watch is not None and pool is not None:
        checks += [
            _labelled("output directory", watch.problem),
            _labelled("writers cannot publish", pool.problem),
        ]
    elif forwarder is not None:
        # A pure bridge is useless while the tool is unreachable: say so, so that traffic goes
        # to another replica (or, with the filter's failure_mode_allow, untapped). A writing
        # emulator stays ready: its files do not need the tool.
        checks.append(forwarder.problem)
    readiness = Readiness(*checks)
    page = None
    # The page shows the files: a pure bridge writes none, so it has none.
    if settings.ui_listen and pool is not None and settings.output_dir is not None:
        page = PageProcess(
            settings.output_dir,
            settings.ui_max_transactions,
            lambda: emulator_status(metrics, readiness.problem),
            settings.log_level,
            settings.log_format,
        )
        pool.on_published = page.offer
        metrics.watch_page(page)
    grpc_health = GrpcHealth((TAP_SERVICE, EXTPROC_SERVICE))
    metrics.watch_calls(core_calls_started, lambda: metrics.stream_calls + grpc_health.calls)
    return Emulator(
        settings=settings,
        metrics=metrics,
        queue=queue,
        publisher=publisher,
        pool=pool,
        watch=watch,
        ledger=ledger,
        registry=registry,
        sink=sink,
        processor=processor,
        readiness=readiness,
        grpc_health=grpc_health,
        http=HttpEndpoint(metrics, readiness),
        page=page,
        forwarder=forwarder,
    )


def _build_writers(
    settings: Settings, metrics: Metrics, queue: WriteQueue, publisher: Publisher | None
) -> tuple[Publisher, WriterPool, RetentionLedger | None]:
    if publisher is None:
        assert settings.output_dir is not None
        publisher = DirectoryPublisher(
            settings.output_dir, file_mode=settings.file_mode, fsync=settings.fsync
        )
    policy = RetentionPolicy(settings.retention_max_bytes, settings.retention_max_files)
    ledger = RetentionLedger(policy) if policy.enabled else None
    numbering = Numbering(
        publisher.exists,
        ledger,
        settings.correlation_max_entries,
        settings.correlation_idle_seconds,
    )
    options = WriterOptions(
        writers=settings.writers,
        batch_max_items=settings.writer_batch_max_items,
        fsync=settings.fsync,
        on_error=settings.on_write_error,
        mode=settings.writer_mode,
    )
    pool = WriterPool(queue, publisher, numbering, metrics, options, ledger)
    return publisher, pool, ledger


def _labelled(label: str, check: Callable[[], str | None]) -> Callable[[], str | None]:
    def labelled() -> str | None:
        problem = check()
        return None if problem is None else f"{label}: {problem}"

    return labelled
