"""Ingest, source: Envoy's TapSinkService. Reads each StreamTaps call, keeps its sender's
identity, hands each trace on.

A message is *accepted* once this handler has read it off its stream. From then on all of its
files are owned by the writers (they go to the queue together, see write/queue.py): they are
published even if the stream is cancelled or the server shuts down. The handler answers OK
only after every file its stream produced has been published; if some were dropped (only with
`on_write_error: drop`, or a file the disk refused for its own sake) it answers DATA_LOSS with
the count instead.

Requests arrive as raw bytes (no deserializer in the gRPC layer) so a malformed message is ours
to report: it ends its own stream with INVALID_ARGUMENT (RESOURCE_EXHAUSTED when over a limit),
after everything the stream sent before it has been queued, and touches nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.naming import UNKNOWN_NAMESPACE, Identity, identity
from tap_emulator.ingest.handoff import Handoff, PendingFiles, Sender
from tap_emulator.ingest.streams import (
    OpenStream,
    Refusal,
    StreamRegistry,
    forget_frames,
    read_message,
)
from tap_emulator.ingest.wire_budget import MalformedError, OverBudgetError, WireBudget
from tap_emulator.labels import Direction, RejectReason, Source, StreamOutcome
from tap_emulator.observe.logs import ThrottledLog
from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.queue import WriteQueue

log = logging.getLogger(__name__)

SERVICE = "envoy.service.tap.v3.TapSinkService"
METHOD = "StreamTaps"
EMPTY_RESPONSE = b""  # a serialized StreamTapsResponse has no fields

# Identity fields longer than this are not a proxy's: Envoy's node ids and tap ids are short.
MAX_IDENTITY_FIELD_BYTES = 4096

ENDINGS = {
    StreamOutcome.SHUTDOWN: (
        "tap-emulator is shutting down; every message read before this was accepted"
    ),
    StreamOutcome.IDLE: "no trace for {idle:g}s: stream closed; reconnect when there is traffic",
}


class StreamRejectedError(Exception):
    """A stream we end on purpose, with the status the sender sees."""

    def __init__(self, outcome: StreamOutcome, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.outcome = outcome
        self.code = code
        self.details = details


def identity_of(request: StreamTapsRequest, default: Direction) -> Identity:
    """Who sends a stream, from its first message's identifier."""
    identifier = request.identifier
    node = identifier.node
    namespace_value = node.metadata.fields.get("NAMESPACE")
    metadata_namespace = None
    if namespace_value is not None and namespace_value.WhichOneof("kind") == "string_value":
        metadata_namespace = namespace_value.string_value
    return identity(identifier.tap_id, node.id, node.cluster, metadata_namespace, default)


def sender_of(request: StreamTapsRequest) -> Sender:
    """The sender as its identifier names it (for the forwarder)."""
    identifier = request.identifier
    node = identifier.node
    namespace_value = node.metadata.fields.get("NAMESPACE")
    namespace = None
    if namespace_value is not None and namespace_value.WhichOneof("kind") == "string_value":
        namespace = namespace_value.string_value
    return Sender(node.id, node.cluster, namespace, identifier.tap_id)


def _identity_too_long(request: StreamTapsRequest) -> str | None:
    identifier = request.identifier
    node = identifier.node
    for name, value in (
        ("tap_id", identifier.tap_id),
        ("node.id", node.id),
        ("node.cluster", node.cluster),
    ):
        if len(value) > MAX_IDENTITY_FIELD_BYTES:
            return f"{name} is {len(value)} characters, over {MAX_IDENTITY_FIELD_BYTES}"
    return None


@dataclass(frozen=True, slots=True)
class TapSinkLimits:
    max_message_bytes: int = 16 * 1024 * 1024
    idle_timeout_seconds: float = 0.0
    budget: WireBudget = WireBudget()


class TapSink:
    """Serves StreamTaps: decode, identify, derive names, queue for the writers."""

    def __init__(
        self,
        handoff: Handoff,
        queue: WriteQueue,
        registry: StreamRegistry,
        metrics: Metrics,
        default_direction: Direction,
        limits: TapSinkLimits = TapSinkLimits(),
    ) -> None:
        self._handoff = handoff
        self._queue = queue
        self._registry = registry
        self._metrics = metrics
        self._limits = limits
        self._anonymous = Identity(default_direction, False, None)
        self._default_direction = default_direction
        self._refusals = ThrottledLog(log)
        self.accepted = 0

    def rpc_handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        handler = grpc.stream_unary_rpc_method_handler(self.stream_taps)
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})

    async def stream_taps(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        # Messages are read through `context` (streams.read_message), never `requests`.
        metrics = self._metrics
        metrics.stream_calls += 1
        if self._registry.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, ENDINGS[StreamOutcome.SHUTDOWN])
        peer = context.peer()
        opened = self._registry.open(Source.TAP, peer)
        if isinstance(opened, Refusal):
            metrics.streams_refused[Source.TAP, opened.reason].inc()
            self._refusals.warning(
                opened.reason.value, "refused a stream from %s: %s", peer, opened.details
            )
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, opened.details)
        assert isinstance(opened, OpenStream)
        stream = opened
        metrics.streams_opened[Source.TAP].inc()
        outcome = StreamOutcome.INTERNAL
        log.debug("stream %d opened by %s", stream.number, peer)
        try:
            dropped = await self._serve_stream(stream, context)
            if dropped:
                outcome = StreamOutcome.DATA_LOSS
                await context.abort(
                    grpc.StatusCode.DATA_LOSS,
                    f"{dropped} of this stream's files were dropped (see "
                    "tap_emulator_files_dropped_total); every other file is on disk",
                )
            outcome = StreamOutcome.OK
            return EMPTY_RESPONSE
        except StreamRejectedError as rejection:
            outcome = rejection.outcome
            self._refusals.warning(
                rejection.outcome.value, "refused a stream from %s: %s", peer, rejection.details
            )
            forget_frames(rejection)
            await context.abort(rejection.code, rejection.details)
            raise  # abort() raises; this line only satisfies the type checker
        except asyncio.CancelledError:
            if stream.ended_by is None:
                outcome = StreamOutcome.CANCELLED  # by the sender, or by the transport
                raise
            # Ended by us (drain or idle): tell the sender it may reconnect or go elsewhere.
            outcome = stream.ended_by
            details = ENDINGS[stream.ended_by].format(idle=self._limits.idle_timeout_seconds)
            await context.abort(grpc.StatusCode.UNAVAILABLE, details)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("stream %d from %s failed unexpectedly", stream.number, peer)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in tap-emulator")
            raise
        finally:
            self._registry.close(stream)
            self._handoff.forget_stream(stream.number)
            metrics.streams_ended[Source.TAP, outcome].inc()
            log.debug("stream %d from %s ended: %s", stream.number, peer, outcome.value)

    async def _serve_stream(
        self, stream: OpenStream, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> int:
        """Read the stream to its end; returns how many of its files were dropped."""
        pending = PendingFiles()
        sender = self._anonymous
        origin: Sender | None = None
        identified = False
        index = 0
        while (raw := await read_message(context)) is not None:
            arrived = time.monotonic()
            index += 1
            request = self._decode(raw, index)
            self.accepted += 1
            if not identified:
                identified = request.HasField("identifier")
                sender = self._identify(request, stream.number, index)
                if identified:
                    origin = sender_of(request)
            if request.HasField("trace"):
                stream.active()  # a keepalive-sized message with no trace is not activity
            group = self._handoff.plan(
                request, sender, stream.number, Source.TAP, len(raw), pending, arrived, origin
            )
            del raw, request  # while this stream waits for room it holds only its files
            if group and not self._queue.try_put(group):
                stream.waiting_for_room = True
                try:
                    await self._queue.put(group)
                finally:
                    stream.waiting_for_room = False
                    stream.active()
        await pending.wait()
        return pending.dropped

    def _decode(self, raw: bytes, index: int) -> StreamTapsRequest:
        limit = self._limits.max_message_bytes
        if len(raw) > limit:
            raise self._reject(
                RejectReason.TOO_LARGE,
                f"message {index} on this stream is {len(raw)} bytes, over max_message_bytes "
                f"({limit}); the {index - 1} before it were accepted",
            )
        try:
            self._limits.budget.check(raw, StreamTapsRequest.DESCRIPTOR)
            request = StreamTapsRequest.FromString(raw)
        except OverBudgetError as exc:
            raise self._reject(
                RejectReason.TOO_MANY_HEADERS,
                f"message {index} on this stream has {exc}; the {index - 1} before it were "
                "accepted",
            ) from exc
        except (DecodeError, MalformedError) as exc:
            raise self._reject(
                RejectReason.DECODE,
                f"message {index} on this stream is not an envoy.service.tap.v3."
                f"StreamTapsRequest ({exc}); the {index - 1} before it were accepted",
            ) from exc
        if request.HasField("identifier"):
            too_long = _identity_too_long(request)
            if too_long is not None:
                raise self._reject(
                    RejectReason.IDENTITY_TOO_LONG,
                    f"message {index} on this stream has an identifier whose {too_long}; "
                    f"the {index - 1} before it were accepted",
                )
        return request

    def _reject(self, reason: RejectReason, details: str) -> StreamRejectedError:
        self._metrics.messages_rejected[Source.TAP, reason].inc()
        if reason is RejectReason.DECODE or reason is RejectReason.IDENTITY_TOO_LONG:
            outcome, code = StreamOutcome.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT
        else:
            outcome, code = StreamOutcome.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED
        return StreamRejectedError(outcome, code, details)

    def _identify(self, request: StreamTapsRequest, stream: int, index: int) -> Identity:
        if not request.HasField("identifier"):
            if index == 1:
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
