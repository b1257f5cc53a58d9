"""Ingest: the TapSinkService. Reads each stream, keeps its sender's identity, hands traces on.

A message is *accepted* once this handler has read it off its stream. From then on it is
owned by the writer pool: it is published even if the stream is cancelled or the server is
shutting down. The handler answers OK only after every file its stream produced has been
published.

Requests arrive as raw bytes (no deserializer in the gRPC layer) so a malformed message is
ours to report: it ends its own stream with INVALID_ARGUMENT, after everything the stream
sent before it has been queued, and touches nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.deriver import Derivation, Deriver, TraceKind
from tap_emulator.derive.naming import UNKNOWN_NAMESPACE, Direction, Identity, identity
from tap_emulator.observe.metrics import Metrics, ThrottledLog
from tap_emulator.write.pool import Publication, WriterPool

log = logging.getLogger(__name__)

SERVICE = "envoy.service.tap.v3.TapSinkService"
METHOD = "StreamTaps"
EMPTY_RESPONSE = b""  # a serialized StreamTapsResponse has no fields


class _StreamRejectedError(Exception):
    """A stream we end on purpose, with the status the sender sees."""

    def __init__(self, outcome: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.outcome = outcome
        self.code = code
        self.details = details


class _Ledger:
    """Counts a stream's files still to be published, so OK means 'all on disk'."""

    __slots__ = ("_all_done", "pending")

    def __init__(self) -> None:
        self.pending = 0
        self._all_done: asyncio.Future[None] | None = None

    def settle(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)

    async def wait(self) -> None:
        if self.pending:
            self._all_done = asyncio.get_running_loop().create_future()
            await self._all_done


def identity_of(request: StreamTapsRequest, default: Direction) -> Identity:
    """Who sends a stream, from its first message's identifier."""
    identifier = request.identifier
    node = identifier.node
    namespace_value = node.metadata.fields.get("NAMESPACE")
    metadata_namespace = None
    if namespace_value is not None and namespace_value.WhichOneof("kind") == "string_value":
        metadata_namespace = namespace_value.string_value
    return identity(identifier.tap_id, node.id, node.cluster, metadata_namespace, default)


@dataclass(slots=True, eq=False)
class _OpenStream:
    """What the server knows about one open StreamTaps call."""

    number: int
    task: asyncio.Task[object] | None
    last_read: float
    waiting_for_room: bool = False
    ended_by: str | None = None  # "shutdown" or "idle": why we cancelled it


_ENDINGS = {
    "shutdown": "tap-emulator is shutting down; every message read before this was accepted",
    "idle": "no message for {idle:g}s: stream closed; reconnect when there is traffic",
}


class TapSink:
    """Serves StreamTaps: decode, identify, derive names, queue for the writers."""

    def __init__(
        self,
        deriver: Deriver,
        pool: WriterPool,
        metrics: Metrics,
        default_direction: Direction,
        *,
        max_message_bytes: int = 16 * 1024 * 1024,
        stream_idle_timeout_seconds: float = 0.0,
    ) -> None:
        self._deriver = deriver
        self._pool = pool
        self._metrics = metrics
        self._default_direction = default_direction
        self._max_message_bytes = max_message_bytes
        self._idle_timeout = stream_idle_timeout_seconds
        self._anonymous = Identity(default_direction, False, None)
        self._stream_numbers = itertools.count(1)
        self._streams: dict[int, _OpenStream] = {}
        self._refusals = ThrottledLog(log)
        self.closing = False
        self.accepted = 0

    def rpc_handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        handler = grpc.stream_unary_rpc_method_handler(self.stream_taps)
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})

    async def stream_taps(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        if self.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _ENDINGS["shutdown"])
        state = _OpenStream(next(self._stream_numbers), asyncio.current_task(), time.monotonic())
        self._streams[state.number] = state
        metrics = self._metrics
        metrics.streams_opened.inc()
        metrics.streams_open.inc()
        outcome = "internal"
        peer = context.peer()
        log.debug("stream %d opened by %s", state.number, peer)
        try:
            await self._serve_stream(state, requests)
            outcome = "ok"
            return EMPTY_RESPONSE
        except _StreamRejectedError as rejection:
            outcome = rejection.outcome
            self._refusals.warning(
                rejection.outcome, "refused a stream from %s: %s", peer, rejection.details
            )
            await context.abort(rejection.code, rejection.details)
            raise  # abort() raises; this line only satisfies the type checker
        except asyncio.CancelledError:
            if state.ended_by is None:
                outcome = "cancelled"  # by the sender, or by the transport
                raise
            # Ended by us (drain or idle): tell the sender it may reconnect or go elsewhere.
            outcome = state.ended_by
            details = _ENDINGS[state.ended_by].format(idle=self._idle_timeout)
            await context.abort(grpc.StatusCode.UNAVAILABLE, details)
            raise
        except Exception:
            log.exception("stream %d from %s failed unexpectedly", state.number, peer)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in tap-emulator")
            raise
        finally:
            del self._streams[state.number]
            self._deriver.forget_stream(state.number)
            metrics.streams_open.dec()
            metrics.streams_ended[outcome].inc()
            log.debug("stream %d from %s ended: %s", state.number, peer, outcome)

    def _end(self, state: _OpenStream, reason: str) -> None:
        if state.task is not None and state.ended_by is None:
            state.ended_by = reason
            state.task.cancel()

    async def end_streams(self, grace_seconds: float) -> None:
        """Refuse new streams; give open ones `grace_seconds` to finish, then end them.

        Ending a stream loses nothing accepted: a message read off a stream is already owned
        by the writer pool (see WriterPool.put)."""
        self.closing = True
        tasks = {s.task for s in self._streams.values() if s.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=grace_seconds)
        for state in list(self._streams.values()):
            self._end(state, "shutdown")
        tasks = {s.task for s in self._streams.values() if s.task is not None}
        if tasks:
            await asyncio.wait(tasks)

    async def close_idle_streams(self) -> None:
        """Run forever: end streams that sent nothing for the idle timeout (0: never)."""
        if self._idle_timeout <= 0:
            return
        period = min(1.0, self._idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self._idle_timeout
            for state in list(self._streams.values()):
                # A stream held back by a full queue is waiting for us, not idle.
                if state.last_read < deadline and not state.waiting_for_room:
                    self._end(state, "idle")

    async def _serve_stream(self, state: _OpenStream, requests: AsyncIterator[bytes]) -> None:
        pool = self._pool
        ledger = _Ledger()
        sender = self._anonymous
        identified = False
        index = 0
        async for raw in requests:
            arrived = time.monotonic()
            state.last_read = arrived
            index += 1
            request = self._decode(raw, index)
            self.accepted += 1
            if not identified:
                identified = request.HasField("identifier")
                sender = self._identify(request, state.number, first=index == 1)
            derivation = self._deriver.derive(request, sender, state.number)
            self._count(derivation, sender, len(raw))
            for planned in derivation.files:
                ledger.pending += 1
                publication = Publication(
                    planned.stem, planned.sequence, planned.payload, arrived, ledger.settle
                )
                if not pool.try_put(publication):
                    state.waiting_for_room = True
                    try:
                        await pool.put(publication)
                    finally:
                        state.waiting_for_room = False
                        state.last_read = time.monotonic()
        await ledger.wait()

    def _decode(self, raw: bytes, index: int) -> StreamTapsRequest:
        if len(raw) > self._max_message_bytes:
            self._metrics.messages_rejected["too_large"].inc()
            raise _StreamRejectedError(
                "resource_exhausted",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message {index} on this stream is {len(raw)} bytes, over max_message_bytes "
                f"({self._max_message_bytes}); the {index - 1} before it were accepted",
            )
        try:
            return StreamTapsRequest.FromString(raw)
        except DecodeError as exc:
            self._metrics.messages_rejected["decode"].inc()
            raise _StreamRejectedError(
                "invalid_argument",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"message {index} on this stream is not an envoy.service.tap.v3."
                f"StreamTapsRequest ({exc}); the {index - 1} before it were accepted",
            ) from exc

    def _identify(self, request: StreamTapsRequest, stream: int, *, first: bool) -> Identity:
        if not request.HasField("identifier"):
            if first:
                self._metrics.streams_without_identifier.inc()
                log.debug("stream %d sent no identifier first; using defaults", stream)
            return self._anonymous
        sender = identity_of(request, self._default_direction)
        if not sender.direction_known:
            self._metrics.streams_unknown_direction.inc()
        log.debug(
            "stream %d is %s from namespace %s",
            stream,
            sender.direction.value,
            sender.client_namespace or UNKNOWN_NAMESPACE,
        )
        return sender

    def _count(self, derivation: Derivation, sender: Identity, size: int) -> None:
        metrics = self._metrics
        metrics.messages_received[derivation.kind.value, sender.direction.value].inc()
        metrics.received_bytes.inc(size)
        if derivation.sanitized:
            metrics.names_sanitized.inc(derivation.sanitized)
        if derivation.truncated:
            metrics.names_truncated.inc(derivation.truncated)
        if derivation.redactions:
            metrics.redactions.inc(derivation.redactions)
        if derivation.kind is TraceKind.SOCKET or derivation.kind is TraceKind.OTHER:
            metrics.fallback_names[derivation.kind.value].inc(len(derivation.files))
