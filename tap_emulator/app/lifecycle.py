"""The server's lifecycle: start, serve until a signal, drain, stop.

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
import socket
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2_grpc

from tap_emulator import __version__
from tap_emulator.app.compose import Emulator, build
from tap_emulator.app.grpc_options import grpc_server_options, server_credentials
from tap_emulator.app.signals import SignalWatch
from tap_emulator.config import Settings
from tap_emulator.layout import parse_file_name
from tap_emulator.netaddr import split_address
from tap_emulator.observe import memory
from tap_emulator.observe.summary import TrafficSummary
from tap_emulator.web.link import PageStartError
from tap_emulator.write.publisher import Publisher

log = logging.getLogger("tap_emulator")

# Streams that are finishing on their own get this long to receive their status.
_STREAM_CLOSE_GRACE_SECONDS = 1.0
_READINESS_POLL_SECONDS = 1.0
# Beyond the drain timeout, the signal thread waits this much longer for an orderly exit.
_EXIT_MARGIN_SECONDS = 5.0


class StartupError(Exception):
    """The server cannot start (a port in use, say); the message names the setting."""


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
