"""Forward: every accepted trace also goes to a TapSinkService tool, one stream per sender.

Runs in the forwarding process (forward/child.py), which calls `offer` for every trace the
emulator hands over: it never waits and costs O(1): the trace goes to its sender's lane in the
bounded forward queue, or gives way by the queue's policy, counted.

Each sender (a proxy's node and the tap id of its capture point, as the proxies themselves
would have named them) gets one long-lived StreamTaps stream to the tool, opened when its
first trace comes: its first message carries the identifier, every message a trace id and
the trace. A lane's traces go in the order they were accepted. A stream that fails is opened
again after a jittered, capped backoff; what was written on it cannot be confirmed (a StreamTaps
server answers only at the end) and is counted as unconfirmed, never sent again: a trace goes
at most once to the tool. A stream with nothing to send for `stream_idle_seconds` is ended
(half-closed; the tool's OK confirms what it carried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from tap_emulator.forward.backoff import Backoff
from tap_emulator.forward.channel import ConnectionWatch, open_channel
from tap_emulator.forward.policy import WhenFull, full_queue_drop
from tap_emulator.forward.queue import ForwardQueue, Lane
from tap_emulator.forward.wire import FRAMING_BYTES, SenderLike, encode_request, identifier_field
from tap_emulator.labels import ForwardDrop, ForwardState
from tap_emulator.observe.logs import ThrottledLog
from tap_emulator.observe.metrics import Metrics

log = logging.getLogger(__name__)

METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
# While draining, how often to look whether the tool is still reachable.
_DRAIN_CHECK_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class ForwardOptions:
    target: str  # HOST:PORT
    queue_max_items: int = 10_000
    queue_max_bytes: int = 64 * 1024 * 1024
    when_full: WhenFull = WhenFull.DROP_OLDEST
    max_message_bytes: int = 4 * 1024 * 1024
    max_streams: int = 1000
    stream_idle_seconds: float = 300.0
    backoff_initial_seconds: float = 0.25
    backoff_max_seconds: float = 5.0


@dataclass(eq=False)
class _Route:
    """One sender's lane, the task that sends it, and its current stream."""

    sender: SenderLike
    identifier: bytes
    payload_limit: int
    lane: Lane = field(default_factory=Lane)
    task: asyncio.Task[None] | None = None
    call: Any = None  # grpc.aio.StreamUnaryCall
    written: int = 0  # traces written on the current stream
    carry: tuple[int, bytes] | None = None  # taken from the lane, not yet written


class Forwarder:
    """The forward queue, one stream per sender, and the connection to the tool."""

    def __init__(
        self,
        options: ForwardOptions,
        metrics: Metrics,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.options = options
        self._metrics = metrics
        self._credentials = credentials
        self.queue = ForwardQueue(
            options.queue_max_items, options.queue_max_bytes, options.when_full
        )
        metrics.watch_forward_queue(
            lambda: self.queue.items,
            lambda: self.queue.size_bytes,
            options.queue_max_items,
            options.queue_max_bytes,
        )
        metrics.forward_streams_open.set_function(self.open_streams)
        self._routes: dict[SenderLike, _Route] = {}
        self._channel: grpc.aio.Channel | None = None
        self._watch: ConnectionWatch | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._draining = False
        self._warnings = ThrottledLog(log)
        self.forwarded = 0
        self.dropped = 0

    # --- the hand-off's side ------------------------------------------------------------

    def offer(self, sender: SenderLike, trace_id: int, payloads: list[bytes]) -> None:
        """Queue the files of one accepted trace for the tool; never waits."""
        route = self._routes.get(sender)
        if route is None:
            if self._channel is None:
                self._drop(ForwardDrop.SHUTDOWN, len(payloads))
                return
            if len(self._routes) >= self.options.max_streams:
                self._drop(ForwardDrop.STREAM_LIMIT, len(payloads))
                return
            route = self._open_route(sender)
        for payload in payloads:
            if len(payload) > route.payload_limit:
                self._drop(ForwardDrop.TOO_LARGE, 1)
                continue
            gave_way = self.queue.put(route.lane, trace_id, payload)
            if gave_way:
                self._drop(full_queue_drop(self.state), gave_way)

    def _drop(self, reason: ForwardDrop, count: int) -> None:
        self.dropped += count
        self._metrics.forward_dropped[reason].inc(count)
        self._warnings.warning(
            f"forward-drop-{reason.value}",
            "forward_to %s: %d traces not forwarded (%s); the sources are never held back",
            self.options.target,
            count,
            reason.value,
        )

    def _open_route(self, sender: SenderLike) -> _Route:
        identifier = identifier_field(sender)
        limit = self.options.max_message_bytes - FRAMING_BYTES - len(identifier)
        route = _Route(sender, identifier, limit)
        self._routes[sender] = route
        route.task = asyncio.get_running_loop().create_task(self._serve(route))
        return route

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> ForwardState:
        return ForwardState.IDLE if self._watch is None else self._watch.state

    def problem(self) -> str | None:
        """Why the tool cannot be reached now, or None while it can."""
        if self.state is ForwardState.READY:
            return None
        return f"forward_to {self.options.target} is unreachable ({self.state.value})"

    def open_streams(self) -> int:
        # A stream counts as open once a trace went out on it (until then it may still be
        # waiting for the connection).
        return sum(1 for r in self._routes.values() if r.call is not None and r.written)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._channel = open_channel(
            self.options.target, self._credentials, self.options.max_message_bytes
        )
        self._watch = ConnectionWatch(self._channel, self.options.target)
        self._metrics.forward_connection(self._watch.state)
        self._watch_task = asyncio.create_task(self._watch.run(self._metrics.forward_connection))

    async def drain(self, within_seconds: float) -> int:
        """Send what is queued and end every stream, waiting for the tool's answers, for at
        most `within_seconds`, and only while the tool is reachable; what is left then is
        dropped. Returns how many traces were dropped at shutdown."""
        self._draining = True
        dropped_before = self.dropped
        deadline = time.monotonic() + within_seconds
        while self._routes and self.state is ForwardState.READY:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for route in self._routes.values():
                route.lane.wake()
            tasks = [route.task for route in self._routes.values() if route.task is not None]
            await asyncio.wait(tasks, timeout=min(remaining, _DRAIN_CHECK_SECONDS))
        await self._cancel_routes()
        return self.dropped - dropped_before

    async def _cancel_routes(self) -> None:
        routes = list(self._routes.values())
        tasks = [route.task for route in routes if route.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A task cancelled before it first ran never reached its own clean-up (a drain right
        # after the traces arrived): what its lane holds would vanish uncounted.
        for route in routes:
            self._retire(route)

    async def close(self) -> None:
        await self._cancel_routes()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        self._metrics.forward_connection(ForwardState.SHUTDOWN)

    # --- one sender's stream --------------------------------------------------------------

    async def _serve(self, route: _Route) -> None:
        """Send the lane until it stays idle (or the drain ends it), then end the stream."""
        backoff = Backoff(self.options.backoff_initial_seconds, self.options.backoff_max_seconds)
        try:
            while True:
                await self._pump(route, backoff)
                await self._end_stream(route)
                if self._draining or len(route.lane) == 0:
                    break
        except asyncio.CancelledError:
            self._abandon(route)
            raise
        finally:
            self._retire(route)

    def _retire(self, route: _Route) -> None:
        """Forget a route; what its lane still holds is dropped and counted."""
        if self._routes.get(route.sender) is route:
            del self._routes[route.sender]
        left = self.queue.clear(route.lane) + (route.carry is not None)
        route.carry = None
        if left:
            self._drop(ForwardDrop.SHUTDOWN, left)

    async def _pump(self, route: _Route, backoff: Backoff) -> None:
        """Write the lane's traces on its stream until it has been idle for
        `stream_idle_seconds`, or (draining) until it is empty or cannot be sent."""
        while True:
            if route.carry is None:
                route.carry = self.queue.take(route.lane)
            if route.carry is None:
                if self._draining:
                    return
                if not await route.lane.wait(self.options.stream_idle_seconds):
                    return
                continue
            if route.call is None:
                if self._draining and self.state is not ForwardState.READY:
                    return
                self._open_stream(route)
            trace_id, payload = route.carry
            message = encode_request(payload, trace_id, b"" if route.written else route.identifier)
            try:
                await route.call.write(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the stream ended: any error of the call
                await self._stream_failed(route, error)
                if self._draining:
                    return
                await asyncio.sleep(backoff.next())
                continue
            route.carry = None
            route.written += 1
            if route.written == 1:
                backoff.reset()
            self.forwarded += 1
            self._metrics.forwarded.inc()
            self._metrics.forwarded_bytes.inc(len(message))

    def _open_stream(self, route: _Route) -> None:
        assert self._channel is not None
        open_call = self._channel.stream_unary(
            METHOD, request_serializer=None, response_deserializer=None
        )
        # wait_for_ready: while the tool is unreachable, the stream waits for the channel to
        # connect (gRPC's own jittered backoff) rather than failing over and over.
        route.call = open_call(None, wait_for_ready=True)
        route.written = 0
        self._metrics.forward_streams_opened.inc()

    async def _end_stream(self, route: _Route) -> None:
        """Half-close the stream and count its traces by the tool's answer."""
        call = route.call
        if call is None:
            return
        try:
            await call.done_writing()
            await call
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            code = await _code_of(call)
        self._settle(route, code, "")

    async def _stream_failed(self, route: _Route, error: Exception) -> None:
        call = route.call
        code = await _code_of(call)
        details = ""
        if isinstance(error, grpc.aio.AioRpcError):
            details = error.details() or ""
        elif call is not None and call.done():
            details = (await call.details()) or ""
        self._settle(route, code, details)

    def _settle(self, route: _Route, code: grpc.StatusCode, details: str) -> None:
        written, route.written, route.call = route.written, 0, None
        if code is grpc.StatusCode.OK:
            self._metrics.forward_confirmed.inc(written)
            return
        self._metrics.forward_unconfirmed.inc(written)
        self._warnings.warning(
            f"forward-stream-{code.name}",
            "forward_to %s: a stream ended with %s %s; %d traces written on it are "
            "unconfirmed (not sent again); reopening it",
            self.options.target,
            code.name,
            details,
            written,
        )

    def _abandon(self, route: _Route) -> None:
        """The drain ran out of time (or the forwarder closes): cancel the stream."""
        if route.call is not None:
            route.call.cancel()
            self._metrics.forward_unconfirmed.inc(route.written)
            route.call, route.written = None, 0


async def _code_of(call: Any) -> grpc.StatusCode:
    """The status a call ended with (cancelling it first if it has not ended)."""
    if call is None:
        return grpc.StatusCode.UNAVAILABLE
    if not call.done():
        call.cancel()
    code: grpc.StatusCode = await call.code()
    return code
