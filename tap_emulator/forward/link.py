"""Forward, the emulator's side: each accepted trace goes to the forwarding process over a
socket, never waiting; what the process reports comes back as the emulator's own metrics.

`offer` (the hand-off's forward hook) costs the event loop a lookup and two list appends: the
traces of one turn of the loop are written to the socket together. gRPC's far larger cost per
message written is the forwarding process's (forward/child.py), on another core. If that
process does not keep up reading, at most `max(1 MiB, forward_queue_max_bytes / 4)` waits in
the socket; beyond that new traces give way, counted like the queue's own drops. If the
process ends unexpectedly, what it held is counted (`reason="forwarder_exit"`) and it is
started again after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from dataclasses import replace
from typing import Any

from tap_emulator.forward import frames
from tap_emulator.forward.backoff import Backoff
from tap_emulator.forward.child import ChildOptions
from tap_emulator.forward.policy import full_queue_drop
from tap_emulator.forward.wire import SenderLike
from tap_emulator.labels import ForwardDrop, ForwardState
from tap_emulator.observe.logs import ThrottledLog
from tap_emulator.observe.metrics import Metrics

log = logging.getLogger(__name__)

_COUNTERS = ("forwarded", "bytes", "confirmed", "unconfirmed", "streams_opened")
_RESTART_BACKOFF = (1.0, 10.0)
_EXIT_MARGIN_SECONDS = 2.0


class ForwardLink:
    """The forwarding process, fed over a socket and watched through its reports."""

    def __init__(self, options: ChildOptions, metrics: Metrics) -> None:
        self.options = options
        self._metrics = metrics
        forward = options.forward
        self._boundary_max_bytes = max(1024 * 1024, forward.queue_max_bytes // 4)
        self._indexes: dict[SenderLike, int] = {}
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._transport: asyncio.Transport | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reports: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        self._status: dict[str, Any] = {}
        self._counted: dict[str, float] = {}
        self._state = ForwardState.IDLE
        self._closing = False
        self._dropped_at_shutdown = 0
        self._backoff = Backoff(*_RESTART_BACKOFF)
        self._warnings = ThrottledLog(log)
        self.dropped = 0
        self.forwarded = 0
        metrics.watch_forward_queue(
            lambda: self._status.get("queue_items", 0),
            lambda: self._status.get("queue_bytes", 0),
            forward.queue_max_items,
            forward.queue_max_bytes,
        )
        metrics.forward_streams_open.set_function(lambda: self._status.get("streams_open", 0))

    # --- the hand-off's side ------------------------------------------------------------

    def offer(self, sender: SenderLike, trace_id: int, payloads: list[bytes]) -> None:
        """Hand the files of one accepted trace to the forwarding process; never waits."""
        transport = self._transport
        if transport is None or transport.is_closing():
            reason = ForwardDrop.SHUTDOWN if self._closing else ForwardDrop.FORWARDER_EXIT
            self._drop(reason, len(payloads))
            return
        index = self._indexes.get(sender)
        if index is None:
            index = self._indexes[sender] = len(self._indexes)
            self._pending.append(
                frames.sender_frame(
                    index, sender.node_id, sender.cluster, sender.namespace, sender.tap_id
                )
            )
        waiting = self._pending_bytes + transport.get_write_buffer_size()
        for payload in payloads:
            if waiting > self._boundary_max_bytes:
                self._drop(full_queue_drop(self._state), 1)
                continue
            self._pending.append(frames.trace_head(index, trace_id, len(payload)))
            self._pending.append(payload)
            waiting += len(payload)
            self._pending_bytes += len(payload)
        if self._flush_handle is None and self._pending:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(self._pending)
        self._pending = []
        self._pending_bytes = 0

    def _drop(self, reason: ForwardDrop, count: int) -> None:
        self.dropped += count
        self._metrics.forward_dropped[reason].inc(count)
        self._warnings.warning(
            f"forward-link-{reason.value}",
            "forward_to %s: %d traces not forwarded (%s); the sources are never held back",
            self.options.forward.target,
            count,
            reason.value,
        )

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> ForwardState:
        return self._state

    def problem(self) -> str | None:
        """Why the tool cannot be reached now, or None while it can."""
        if self._process is None or self._process.returncode is not None:
            return "the forwarding process is not running"
        if self._state is ForwardState.READY:
            return None
        return f"forward_to {self.options.forward.target} is unreachable ({self._state.value})"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._spawn()

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        options = replace(self.options, fd=theirs.fileno())
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tap_emulator.forward.child",
                options.to_json(),
                pass_fds=(theirs.fileno(),),
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C reaches the emulator, which drains it
            )
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        self._indexes.clear()
        self._status, self._counted = {}, {}  # a new process counts from zero
        self._reports = asyncio.create_task(self._read_reports(self._process))

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if "status" in message:
                    self._apply(message["status"])
                elif "done" in message:
                    self._apply(message["done"])
                    self._dropped_at_shutdown = int(message["done"]["dropped_at_shutdown"])
        status = await process.wait()
        if self._transport is not None:
            self._transport.close()
        if not self._closing:
            self._lost(status)

    def _apply(self, status: dict[str, Any]) -> None:
        metrics = self._metrics
        counters = {
            "forwarded": self._forwarded_by,
            "bytes": metrics.forwarded_bytes.inc,
            "confirmed": metrics.forward_confirmed.inc,
            "unconfirmed": metrics.forward_unconfirmed.inc,
            "streams_opened": metrics.forward_streams_opened.inc,
        }
        for name in _COUNTERS:
            self._count(name, float(status[name]), counters[name])
        for reason, value in status["dropped"].items():
            self._count(f"dropped_{reason}", float(value), self._dropped_by(ForwardDrop(reason)))
        self._status = status
        state = ForwardState(status["state"])
        if state is not self._state:
            self._state = state
            metrics.forward_connection(state)

    def _count(self, key: str, total: float, increment: Any) -> None:
        delta = total - self._counted.get(key, 0.0)
        if delta > 0:
            increment(delta)
            self._counted[key] = total

    def _forwarded_by(self, count: float) -> None:
        self.forwarded += int(count)
        self._metrics.forwarded.inc(count)

    def _dropped_by(self, reason: ForwardDrop) -> Any:
        def increment(count: float) -> None:
            self.dropped += int(count)
            self._metrics.forward_dropped[reason].inc(count)

        return increment

    def _lost(self, status: int) -> None:
        held = int(self._status.get("queue_items", 0))
        if held:
            self._drop(ForwardDrop.FORWARDER_EXIT, held)
        delay = self._backoff.next()
        log.error(
            "the forwarding process ended unexpectedly (status %d) holding %d traces; "
            "starting it again in %.1fs",
            status,
            held,
            delay,
        )
        self._state = ForwardState.IDLE
        self._metrics.forward_connection(self._state)
        self._status["queue_items"] = self._status["queue_bytes"] = 0
        self._status["streams_open"] = 0
        self._restart = asyncio.create_task(self._respawn(delay))

    async def _respawn(self, delay_seconds: float) -> None:
        await asyncio.sleep(delay_seconds)
        if not self._closing:
            await self._spawn()

    async def drain(self, within_seconds: float) -> int:
        """Ask the process to forward what it has and end its streams within
        `within_seconds`; returns the traces it dropped at shutdown."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
        transport, reports = self._transport, self._reports
        if transport is None or transport.is_closing() or reports is None:
            return 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        transport.write(frames.drain_frame(within_seconds))
        try:
            async with asyncio.timeout(within_seconds + _EXIT_MARGIN_SECONDS):
                await asyncio.shield(reports)
        except TimeoutError:
            held = int(self._status.get("queue_items", 0))
            log.error("the forwarding process did not end in time; stopping it (%d held)", held)
            self._drop(ForwardDrop.SHUTDOWN, held)
        return self._dropped_at_shutdown

    async def close(self) -> None:
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if self._reports is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reports
        if self._transport is not None:
            self._transport.close()
        self._metrics.forward_connection(ForwardState.SHUTDOWN)
