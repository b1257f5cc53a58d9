"""Ingest, shared by every source: the open streams, who may open one, and how they end.

Each source (the TapSinkService, the ext_proc processor) has its own stream slots, so one
kind of traffic cannot starve the other, and health checks never compete with either: they
are not counted here at all. Inside a source, one peer address may hold at most its share of
the slots, so a single client with many connections cannot take them all. A stream refused
for either reason gets RESOURCE_EXHAUSTED with the limit's name; readiness reports a source
whose slots are all taken.

The registry also ends streams: all of them at shutdown (after a grace period for those that
are finishing on their own), and one that carried no trace for its source's idle timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from tap_emulator.labels import RejectReason, Source, StreamOutcome
from tap_emulator.netaddr import peer_address


async def read_message(context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes | None:
    """The call's next message, or None at its end.

    Read through the context, not grpc's request iterator: the iterator is an async
    generator that keeps the last message it yielded until the next one has arrived (or the
    call is gone), one more copy of up to max_message_bytes per stream, held even while the
    stream waits for queue room or sits idle. Handlers delete what they read once it is
    handed on, so a stream holds nothing while it waits."""
    message: object = await context.read()
    return message if isinstance(message, bytes) else None  # grpc.aio.EOF at the end


def forget_frames(error: BaseException) -> None:
    """Drop the frames an exception (and what caused it) still holds, before aborting a call.

    grpc keeps the exception `context.abort` raises, whose context is `error`, in a reference
    cycle with the handler's frame: frames left in `error`'s traceback would keep their
    locals, such as the refused message (up to twice max_message_bytes), alive until the
    cyclic garbage collector next runs, and a stream of refused messages piles them up."""
    seen: BaseException | None = error
    while seen is not None:
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """A source's slots: in all, per peer address, and how long a stream may carry nothing."""

    max_streams: int
    max_streams_per_peer: int
    idle_timeout_seconds: float = 0.0  # 0: never ended for idleness
    names: tuple[str, str] = ("max_concurrent_streams", "max_streams_per_peer")  # the settings


@dataclass(slots=True, eq=False)
class OpenStream:
    """What the server knows about one open stream."""

    number: int
    source: Source
    peer: str
    task: asyncio.Task[object] | None
    last_activity: float
    waiting_for_room: bool = False
    ended_by: StreamOutcome | None = None  # SHUTDOWN or IDLE when we cancelled it

    def active(self) -> None:
        """The stream carried a trace: it is not idle."""
        self.last_activity = time.monotonic()


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RejectReason
    details: str


class StreamRegistry:
    """Open streams of every source, with admission and ending."""

    def __init__(self, limits: dict[Source, StreamLimits]) -> None:
        self._limits = limits
        self._numbers = itertools.count(1)
        self._streams: dict[int, OpenStream] = {}
        self._per_source: Counter[Source] = Counter()
        self._per_peer: Counter[tuple[Source, str]] = Counter()
        self.closing = False

    def open(self, source: Source, peer: str) -> OpenStream | Refusal:
        limits = self._limits[source]
        if self._per_source[source] >= limits.max_streams:
            return Refusal(
                RejectReason.STREAM_LIMIT,
                f"stream limit reached: all {limits.max_streams} {source.value} stream slots "
                f"are taken ({limits.names[0]}); retry later",
            )
        address = peer_address(peer)
        if self._per_peer[source, address] >= limits.max_streams_per_peer:
            return Refusal(
                RejectReason.PEER_LIMIT,
                f"peer limit reached: {address} already holds {limits.max_streams_per_peer} "
                f"{source.value} streams, its share of the slots ({limits.names[1]})",
            )
        stream = OpenStream(
            next(self._numbers), source, address, asyncio.current_task(), time.monotonic()
        )
        self._streams[stream.number] = stream
        self._per_source[source] += 1
        self._per_peer[source, address] += 1
        return stream

    def close(self, stream: OpenStream) -> None:
        if self._streams.pop(stream.number, None) is None:
            return
        self._per_source[stream.source] -= 1
        key = (stream.source, stream.peer)
        self._per_peer[key] -= 1
        if not self._per_peer[key]:
            del self._per_peer[key]

    def open_streams(self, source: Source) -> int:
        return self._per_source[source]

    def full(self) -> str | None:
        """A source with every slot taken (no new stream can be accepted), or None."""
        for source, limits in self._limits.items():
            if self._per_source[source] >= limits.max_streams:
                return f"all {limits.max_streams} {source.value} stream slots are taken"
        return None

    # --- ending -------------------------------------------------------------------------

    def end(self, stream: OpenStream, why: StreamOutcome) -> None:
        if stream.task is not None and stream.ended_by is None:
            stream.ended_by = why
            stream.task.cancel()

    async def end_all(self, grace_seconds: float) -> None:
        """Refuse new streams; give open ones `grace_seconds` to finish, then end them."""
        self.closing = True
        tasks = {s.task for s in self._streams.values() if s.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=grace_seconds)
        for stream in list(self._streams.values()):
            self.end(stream, StreamOutcome.SHUTDOWN)
        tasks = {s.task for s in self._streams.values() if s.task is not None}
        if tasks:
            await asyncio.wait(tasks)

    async def close_idle_streams(self) -> None:
        """Run forever: end streams that carried no trace for their source's idle timeout."""
        timeouts = [lim.idle_timeout_seconds for lim in self._limits.values()]
        enabled = [timeout for timeout in timeouts if timeout > 0]
        if not enabled:
            return
        period = min(1.0, min(enabled) / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for stream in list(self._streams.values()):
                timeout = self._limits[stream.source].idle_timeout_seconds
                # A stream held back by a full queue is waiting for us, not idle.
                idle = timeout > 0 and stream.last_activity < now - timeout
                if idle and not stream.waiting_for_room:
                    self.end(stream, StreamOutcome.IDLE)
