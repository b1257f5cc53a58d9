"""Face: the composition root and the server's lifecycle (start, serve, drain, stop).

Start order: open the output directory (sweeping our stale temporaries), start the
writers, start the gRPC listener and the HTTP endpoint, log one line with every bound
address, then report ready.

Stop order, on the first SIGTERM or SIGINT: report not ready (HTTP and gRPC health), stop
accepting streams and end the open ones (a proxy's tap stream never ends by itself), publish
every accepted message, then exit 0. If that does not finish within `drain_timeout_seconds`
the exact number of accepted messages not written is logged and the exit status is 1. A
second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from tap_emulator import __version__
from tap_emulator.config import ConfigError, Settings, split_address
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter, StemSketch
from tap_emulator.derive.deriver import Deriver, NamingPolicy
from tap_emulator.ingest.tapsink import TapSink
from tap_emulator.observe.health import GrpcHealth, HttpEndpoint, Readiness
from tap_emulator.observe.metrics import Metrics, TableStats
from tap_emulator.write.pool import WriterPool
from tap_emulator.write.retention import RetentionPolicy

log = logging.getLogger("tap_emulator")

TRANSPORT = "grpcio"
# Streams that are finishing on their own get this long to receive their status.
_STREAM_CLOSE_GRACE_SECONDS = 1.0
_READINESS_POLL_SECONDS = 1.0


def grpc_server_options(settings: Settings) -> list[tuple[str, int]]:
    """Transport options.

    - bdp_probe=0 keeps grpc from growing its receive windows without bound while a handler
      stops reading (decisions.md 2): this is what makes backpressure bound memory. A fixed
      256 KiB stream window (lookahead_bytes) wins back the throughput that costs with large
      messages (docs/measurements/transport.md: 64 KiB messages 8.5k -> 11.9k msg/s).
    - The transport accepts messages up to twice max_message_bytes so that the handler sees,
      counts and refuses the ones just over the limit with a status that says why; beyond
      that the transport refuses them itself (RESOURCE_EXHAUSTED, not counted by us).
    - Each connection may open max_streams_per_connection streams (advertised in HTTP/2
      SETTINGS), inside the process-wide max_concurrent_streams.
    - Keepalive: the server pings a connection idle for 2 minutes and drops it if no answer
      comes within 20 s (dead proxies do not hold streams open); clients may ping at most
      every 30 s without data, and two pings too many get GOAWAY (gRPC's ping strikes).
    """
    return [
        ("grpc.max_receive_message_length", 2 * settings.max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 256 * 1024),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
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


@dataclass
class Emulator:
    """Everything `serve` runs, wired together; built by `build`, run by `run`."""

    settings: Settings
    metrics: Metrics
    pool: WriterPool
    deriver: Deriver
    sink: TapSink
    readiness: Readiness
    grpc_health: GrpcHealth
    http: HttpEndpoint
    sketch: StemSketch
    server: grpc.aio.Server | None = None
    tap_address: tuple[str, int] | None = None
    metrics_address: tuple[str, int] | None = None


def build(settings: Settings) -> Emulator:
    metrics = Metrics(transport=TRANSPORT)
    pool = WriterPool(
        settings.output_dir,
        metrics,
        writers=settings.writers,
        batch_max_items=settings.writer_batch_max_items,
        max_items=settings.queue_max_items,
        max_bytes=settings.queue_max_bytes,
        fsync=settings.fsync,
        file_mode=settings.file_mode,
        retention=RetentionPolicy(settings.retention_max_bytes, settings.retention_max_files),
        on_error=settings.on_write_error,
        mode=settings.writer_mode,
    )
    sketch = StemSketch()
    sequences = SequenceCounter(
        pool.highest_published,
        settings.correlation_max_entries,
        settings.correlation_idle_seconds,
        sketch=sketch,
    )
    segments = SegmentNames(settings.correlation_max_entries, settings.correlation_idle_seconds)
    metrics.watch_table("sequences", partial(_table_stats, sequences))
    metrics.watch_table("segments", partial(_table_stats, segments))
    policy = NamingPolicy(
        name_format=settings.name_format,
        trace_id_headers=settings.trace_id_headers,
        redact_headers=frozenset(settings.redact_headers),
        default_direction=settings.default_direction,
    )
    deriver = Deriver(policy, sequences, segments)
    sink = TapSink(
        deriver,
        pool,
        metrics,
        settings.default_direction,
        max_message_bytes=settings.max_message_bytes,
        stream_idle_timeout_seconds=settings.stream_idle_timeout_seconds,
    )
    readiness = Readiness(lambda: _output_problem(pool))
    return Emulator(
        settings=settings,
        metrics=metrics,
        pool=pool,
        deriver=deriver,
        sink=sink,
        readiness=readiness,
        grpc_health=GrpcHealth(),
        http=HttpEndpoint(metrics, readiness),
        sketch=sketch,
    )


def _table_stats(table: SequenceCounter | SegmentNames) -> TableStats:
    return TableStats(len(table), table.evictions.capacity, table.evictions.idle)


def _output_problem(pool: WriterPool) -> str | None:
    failing = pool.failing
    if failing is not None:
        return f"{errno.errorcode.get(failing.errno or 0, 'error')}: {failing.strerror}"
    return pool.probe_writable()


async def start(emulator: Emulator) -> None:
    settings = emulator.settings
    removed = emulator.pool.open()
    for stem in emulator.pool.existing_stems():
        emulator.sketch.add(stem)  # so that only these (and stems used later) cost a lookup
    await emulator.pool.start()

    server = grpc.aio.server(
        options=grpc_server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_streams,
    )
    server.add_generic_rpc_handlers([emulator.sink.rpc_handler()])
    health_pb2_grpc.add_HealthServicer_to_server(emulator.grpc_health.servicer, server)
    host, port = split_address(settings.listen)
    credentials = server_credentials(settings)
    if credentials is None:
        bound_port = server.add_insecure_port(_grpc_address(host, port))
    else:
        bound_port = server.add_secure_port(_grpc_address(host, port), credentials)
    await server.start()
    emulator.server = server
    emulator.tap_address = (host, bound_port)

    if settings.metrics_listen:
        metrics_host, metrics_port = split_address(settings.metrics_listen)
        emulator.metrics_address = await emulator.http.start(metrics_host, metrics_port)

    emulator.readiness.listening = True
    await emulator.grpc_health.serving(emulator.readiness.problem() is None)
    log.info(
        "tap-emulator %s listening tap=%s metrics=%s output_dir=%s writers=%d "
        "batch=%d queue_max_items=%d queue_max_bytes=%d name_format=%s transport=%s tls=%s "
        "publish=%s%s",
        __version__,
        _show(emulator.tap_address),
        _show(emulator.metrics_address) if emulator.metrics_address else "off",
        settings.output_dir,
        settings.writers,
        settings.writer_batch_max_items,
        settings.queue_max_items,
        settings.queue_max_bytes,
        settings.name_format.value,
        TRANSPORT,
        "mutual" if settings.tls_client_ca_file else ("on" if credentials else "off"),
        emulator.pool.publishing_method,
        f" (removed {removed} stale temporary files)" if removed else "",
    )


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    await emulator.sink.end_streams(grace)
    log.info("draining: streams closed; publishing %d accepted files", emulator.pool.unpublished)
    remaining_time = max(0.0, settings.drain_timeout_seconds - (time.monotonic() - started))
    unwritten = await emulator.pool.drain(remaining_time)
    if emulator.server is not None:
        # Streams were ended above; the grace lets their UNAVAILABLE statuses reach the
        # senders instead of being cut off by the transport's own shutdown.
        await emulator.server.stop(_STREAM_CLOSE_GRACE_SECONDS)
    await emulator.http.close()
    totals = (
        f"accepted {emulator.sink.accepted} messages, published {emulator.pool.published} files"
    )
    if unwritten:
        log.error(
            "drain timed out after %.1fs: %s; %d accepted files were not written",
            settings.drain_timeout_seconds,
            totals,
            unwritten,
        )
        return 1
    await emulator.pool.close()
    log.info("stopped cleanly in %.2fs: %s", time.monotonic() - started, totals)
    return 0


async def _follow_readiness(emulator: Emulator) -> None:
    """Keep the gRPC health status in step with readiness (e.g. a disk that fills)."""
    last: bool | None = None
    while True:
        ready = emulator.readiness.problem() is None
        if ready != last:
            await emulator.grpc_health.serving(ready)
            last = ready
        await asyncio.sleep(_READINESS_POLL_SECONDS)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status."""
    emulator = build(settings)
    await start(emulator)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.error(
                "second %s: exiting now with %d accepted files not written",
                signal.Signals(signum).name,
                emulator.pool.unpublished,
            )
            logging.shutdown()
            os._exit(1)
        log.info("%s received", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    watchers = [
        asyncio.create_task(_follow_readiness(emulator)),
        asyncio.create_task(emulator.sink.close_idle_streams()),
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


def run(settings: Settings) -> int:
    """Run `serve` on the fastest available event loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(serve(settings))
    if sys.version_info >= (3, 12):  # pragma: no cover
        return uvloop.run(serve(settings))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))
