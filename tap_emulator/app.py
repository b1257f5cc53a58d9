"""App: the composition root and the server's lifecycle (start, serve, drain, stop).

Start order: start the web page's process, open the output directory (in a thread: learn what
it holds, sweep stale temporaries), start the writers and the directory's watch, start the
forwarding process (forward_to), start the gRPC listener and the HTTP endpoint, log one line
with every bound address, then report ready. With `output_dir: ''` there are no writers and no
page: the emulator is a pure bridge.

Stop order, on the first SIGTERM or SIGINT: report not ready (HTTP and gRPC health), stop
accepting streams and end the open ones (a proxy's tap stream never ends by itself), publish
every accepted message and forward what is queued (together, within the drain timeout), then
exit 0. If publishing does not finish within `drain_timeout_seconds` the exact number of
accepted files not written is logged and the exit status is 1. A second
signal exits at once. Signals are taken by a thread of their own (see `SignalWatch`), so both
promises hold even if the event loop is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from tap_emulator import __version__
from tap_emulator.config import ConfigError, Settings
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
from tap_emulator.layout import parse_file_name
from tap_emulator.netaddr import split_address
from tap_emulator.observe import memory
from tap_emulator.observe.health import GrpcHealth, HttpEndpoint, Readiness
from tap_emulator.observe.metrics import Metrics, TableStats
from tap_emulator.observe.summary import TrafficSummary
from tap_emulator.web.link import PageProcess, PageStartError
from tap_emulator.web.status import emulator_status
from tap_emulator.write.directory import DirectoryPublisher
from tap_emulator.write.numbering import Numbering
from tap_emulator.write.pool import WriterOptions, WriterPool
from tap_emulator.write.publisher import Publisher
from tap_emulator.write.queue import WriteQueue
from tap_emulator.write.retention import RetentionLedger, RetentionPolicy
from tap_emulator.write.watch import OutputWatch

log = logging.getLogger("tap_emulator")

# Streams that are finishing on their own get this long to receive their status.
_STREAM_CLOSE_GRACE_SECONDS = 1.0
_READINESS_POLL_SECONDS = 1.0
# Beyond the drain timeout, the signal thread waits this much longer for an orderly exit.
_EXIT_MARGIN_SECONDS = 5.0


class StartupError(Exception):
    """The server cannot start (a port in use, say); the message names the setting."""


def grpc_server_options(settings: Settings) -> list[tuple[str, int]]:
    """Transport options.

    - bdp_probe=0 keeps grpc from growing its receive windows without bound while a handler
      stops reading: this is what makes backpressure bound memory. A fixed 256 KiB stream
      window (lookahead_bytes) wins back the throughput that costs with large messages
      (docs/measurements/transport.md: 64 KiB messages 8.5k -> 11.9k msg/s).
    - The transport accepts messages up to twice max_message_bytes so that the handler sees,
      counts and refuses the ones just over the limit with a status that says why; beyond
      that the transport refuses them itself (RESOURCE_EXHAUSTED, not counted by us).
    - Each connection may open max_streams_per_connection streams (advertised in HTTP/2
      SETTINGS); fairness between clients is the stream registry's job (per source, per peer).
      There is deliberately no process-wide RPC cap in grpc itself: it would count health
      checks against the tap streams' slots.
    - Keepalive: the server pings a connection idle for 30 s and drops it if no answer comes
      within 10 s (a dead or frozen peer does not hold streams for minutes; grpc core enforces
      that deadline with its ping timeout, a minute by default, not keepalive_timeout_ms, so
      both are set); clients may ping at most every 5 s without data (the filter chart has
      Envoy ping every 10 s, to drop a frozen emulator), and two pings too many get GOAWAY
      (gRPC's ping strikes).
    """
    return [
        ("grpc.max_receive_message_length", 2 * settings.max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 256 * 1024),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _read_setting_file(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path} ({exc.strerror})") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and with a client CA, mutual TLS) for the tap port; None means plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = _read_setting_file("tls_key_file", settings.tls_key_file)
    chain = _read_setting_file("tls_cert_file", settings.tls_cert_file)
    client_ca = None
    if settings.tls_client_ca_file is not None:
        client_ca = _read_setting_file("tls_client_ca_file", settings.tls_client_ca_file)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


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
            _read_setting_file(name, path)
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
        grpc_health=GrpcHealth((TAP_SERVICE, EXTPROC_SERVICE)),
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


def _open_output(emulator: Emulator) -> int:
    """Blocking start-up work on the output directory (run in a thread); returns how many
    stale temporaries were removed."""
    publisher = emulator.publisher
    if publisher is None or emulator.pool is None:
        return 0
    publisher.open()
    swept = publisher.sweep()
    if swept.skipped:
        log.warning(
            "left %d entries named like our temporaries in %s alone: not ours to remove "
            "(directories, or other users' files)",
            swept.skipped,
            emulator.settings.output_dir,
        )
    found = list(publisher.scan())
    emulator.pool.numbering.learn(
        parsed[0] for parsed in map(parse_file_name, (f.name for f in found)) if parsed
    )
    ledger = emulator.ledger
    if ledger is not None:
        ledger.load(found)
        for doomed in ledger.over_cap():
            with contextlib.suppress(OSError):
                emulator.metrics.files_deleted.inc(publisher.delete(doomed))
        emulator.metrics.watch_retention(lambda: ledger.total_bytes, lambda: len(ledger))
    return swept.removed


def _check_port_free(setting: str, host: str, port: int) -> None:
    """Fail with one clear line if something already listens there (grpc and asyncio would
    print a traceback of their own)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use ({setting}): stop the other "
                    f"server or choose another --{setting.replace('_', '-')}"
                ) from exc
            raise StartupError(
                f"cannot listen on {host}:{port} ({setting}): {exc.strerror}"
            ) from exc


async def start(emulator: Emulator) -> None:
    settings = emulator.settings
    host, port = split_address(settings.listen)
    _check_port_free("listen", host, port)
    if settings.metrics_listen:
        _check_port_free("metrics_listen", *split_address(settings.metrics_listen))
    if emulator.page is not None:
        _check_port_free("ui_listen", *split_address(settings.ui_listen))
        # Before the gRPC server and the writers exist: starting a process forks, and gRPC's
        # threads are best not running then.
        try:
            emulator.ui_address = await emulator.page.start(*split_address(settings.ui_listen))
        except (PageStartError, TimeoutError, OSError) as exc:
            raise StartupError(f"the web page (ui_listen) did not start: {exc}") from exc
    removed = await asyncio.to_thread(_open_output, emulator)
    if emulator.pool is not None and emulator.watch is not None:
        await emulator.pool.start()
        emulator.watch.start()
    if emulator.forwarder is not None:
        await emulator.forwarder.start()

    server = grpc.aio.server(options=grpc_server_options(settings))
    server.add_generic_rpc_handlers([emulator.sink.rpc_handler(), emulator.processor.rpc_handler()])
    health_pb2_grpc.add_HealthServicer_to_server(emulator.grpc_health, server)
    credentials = server_credentials(settings)
    address = _grpc_address(host, port)
    if credentials is None:
        bound_port = server.add_insecure_port(address)
    else:
        bound_port = server.add_secure_port(address, credentials)
    await server.start()
    emulator.server = server
    emulator.tap_address = (host, bound_port)

    if settings.metrics_listen:
        metrics_host, metrics_port = split_address(settings.metrics_listen)
        try:
            emulator.metrics_address = await emulator.http.start(metrics_host, metrics_port)
        except OSError as exc:
            await server.stop(None)
            raise StartupError(
                f"cannot listen on {settings.metrics_listen} (metrics_listen): {exc.strerror}"
            ) from exc

    emulator.readiness.listening = True
    await emulator.grpc_health.serving(emulator.readiness.problem() is None)
    log.info(
        "tap-emulator %s listening tap=%s metrics=%s ui=%s output_dir=%s writers=%d "
        "batch=%d queue_max_items=%d queue_max_bytes=%d name_format=%s tls=%s publish=%s "
        "forward_to=%s%s",
        __version__,
        _show(emulator.tap_address),
        _show(emulator.metrics_address) if emulator.metrics_address else "off",
        _page_url(emulator.ui_address) if emulator.ui_address else "off",
        settings.output_dir or "off",
        settings.writers,
        settings.writer_batch_max_items,
        settings.queue_max_items,
        settings.queue_max_bytes,
        settings.name_format.value,
        "mutual" if settings.tls_client_ca_file else ("on" if credentials else "off"),
        emulator.publisher.method if emulator.publisher is not None else "off",
        settings.forward_to or "off",
        f" (removed {removed} stale temporary files)" if removed else "",
    )


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _page_url(address: tuple[str, int]) -> str:
    return f"http://{_grpc_address(*address)}/"


def _show(address: tuple[str, int] | None) -> str:
    if address is None:
        return "-"
    return _grpc_address(*address)


async def stop(emulator: Emulator) -> int:
    """Drain and stop; returns the process exit status (0 when nothing accepted was lost).

    The gRPC server keeps running until the writers are done, so health checks answer
    NOT_SERVING during the drain instead of failing to connect; tap streams are refused."""
    started = time.monotonic()
    settings = emulator.settings
    emulator.readiness.draining = True
    await emulator.grpc_health.serving(False)
    grace = min(_STREAM_CLOSE_GRACE_SECONDS, settings.drain_timeout_seconds)
    await emulator.registry.end_all(grace)
    log.info("draining: streams closed; publishing %d accepted files", emulator.unpublished)
    remaining_time = max(0.0, settings.drain_timeout_seconds - (time.monotonic() - started))
    unwritten, unforwarded = await asyncio.gather(
        _drain_writers(emulator, remaining_time), _drain_forwarder(emulator, remaining_time)
    )
    if emulator.server is not None:
        # Streams were ended above; the grace lets their UNAVAILABLE statuses reach the
        # senders instead of being cut off by the transport's own shutdown.
        await emulator.server.stop(_STREAM_CLOSE_GRACE_SECONDS)
    await emulator.http.close()
    if emulator.page is not None:
        await emulator.page.close()
    if emulator.forwarder is not None:
        await emulator.forwarder.close()
    totals = _totals(emulator, unforwarded)
    if unwritten:
        log.error(
            "drain timed out after %.1fs: %s; %d accepted files were not written",
            settings.drain_timeout_seconds,
            totals,
            unwritten,
        )
        return 1
    if emulator.watch is not None and emulator.pool is not None and emulator.publisher:
        await emulator.watch.close()
        await emulator.pool.close()
        await asyncio.to_thread(emulator.publisher.close)
    log.info("stopped cleanly in %.2fs: %s", time.monotonic() - started, totals)
    return 0


async def _drain_writers(emulator: Emulator, within_seconds: float) -> int:
    """Publish every accepted file; returns how many were not written in time."""
    if emulator.pool is None:
        return 0
    return await emulator.pool.drain(within_seconds)


async def _drain_forwarder(emulator: Emulator, within_seconds: float) -> int:
    """Forward what is queued while the tool is reachable; returns the traces dropped."""
    if emulator.forwarder is None:
        return 0
    return await emulator.forwarder.drain(within_seconds)


def _totals(emulator: Emulator, unforwarded: int) -> str:
    pool, forwarder = emulator.pool, emulator.forwarder
    totals = f"accepted {emulator.sink.accepted} messages"
    if pool is not None:
        totals += f", published {pool.published} files"
        totals += f", dropped {pool.dropped}" if pool.dropped else ""
    if forwarder is not None:
        totals += f", forwarded {forwarder.forwarded} traces"
        # Not forwarded does not make the exit status: the files are the delivery contract.
        totals += f" ({unforwarded} dropped at shutdown)" if unforwarded else ""
    return totals + f" (ext_proc: {emulator.processor.accepted} transactions)"


async def _follow_readiness(emulator: Emulator) -> None:
    """Keep the gRPC health status in step with readiness (e.g. a disk that fills)."""
    while True:
        await emulator.grpc_health.serving(emulator.readiness.problem() is None)
        await asyncio.sleep(_READINESS_POLL_SECONDS)


class SignalWatch:
    """SIGTERM and SIGINT, taken by a thread of their own with `sigwait`.

    The signals are blocked in every thread (before any is started) and waited for here, so
    they are seen at once whatever the event loop is doing. The first asks the server to drain
    (through the loop); if the process is still running `drain_timeout + margin` later (the
    loop stuck, a writer stuck in the kernel), it logs how many accepted files were not
    written and exits 1. A second signal exits 1 at once, with the same count."""

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

    def __init__(self, deadline_seconds: float) -> None:
        self._deadline_seconds = deadline_seconds
        self._unpublished: Callable[[], int] = lambda: 0
        self._on_first: Callable[[int], None] | None = None
        self._thread = threading.Thread(target=self._run, name="tap-signals", daemon=True)

    @classmethod
    def block_signals(cls) -> None:
        """Call in the main thread before any other thread exists: threads inherit the mask."""
        signal.pthread_sigmask(signal.SIG_BLOCK, cls.SIGNALS)

    def start(self, on_first: Callable[[int], None], unpublished: Callable[[], int]) -> None:
        self._on_first = on_first
        self._unpublished = unpublished
        self._thread.start()

    def _run(self) -> None:
        first = signal.sigwait(self.SIGNALS)
        log.info("%s received", signal.Signals(first).name)
        assert self._on_first is not None
        self._on_first(first)
        second = signal.sigtimedwait(self.SIGNALS, self._deadline_seconds)
        if second is None:
            self._exit(f"the drain did not end {self._deadline_seconds:.0f}s after {_name(first)}")
        else:
            self._exit(f"second {_name(second.si_signo)}")

    def _exit(self, why: str) -> None:
        log.error("%s: exiting now with %d accepted files not written", why, self._unpublished())
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(1)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


async def serve(
    settings: Settings, signals: SignalWatch | None = None, publisher: Publisher | None = None
) -> int:
    """Run until SIGTERM or SIGINT (taken by `signals`); returns the exit status."""
    emulator = build(settings, publisher)
    await start(emulator)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    if signals is not None:

        def on_first_signal(_signum: int) -> None:
            loop.call_soon_threadsafe(stopping.set)

        signals.start(on_first_signal, lambda: emulator.unpublished)
    summary = TrafficSummary(emulator.metrics, lambda: emulator.queue.items)
    watchers = [
        asyncio.create_task(_follow_readiness(emulator)),
        asyncio.create_task(emulator.registry.close_idle_streams()),
        asyncio.create_task(summary.run(settings.log_summary_seconds)),
        asyncio.create_task(memory.MemoryReturner().run()),
    ]
    try:
        await stopping.wait()
    finally:
        for watcher in watchers:
            watcher.cancel()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return await stop(emulator)


def run(settings: Settings, publisher: Publisher | None = None) -> int:
    """Run `serve` on the fastest available event loop, with signals in their own thread."""
    SignalWatch.block_signals()
    memory.tune_allocator()
    signals = SignalWatch(
        settings.drain_timeout_seconds + _STREAM_CLOSE_GRACE_SECONDS * 2 + _EXIT_MARGIN_SECONDS
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        status = runner.run(serve(settings, signals, publisher))
    if status != 0:
        # Writer threads may be stuck in the kernel (a frozen disk): do not wait to join them.
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(status)
    return status


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (the fastest loop measured here), else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return None
    return uvloop.new_event_loop
