"""Ingest, source: Envoy's ExternalProcessor, as the tap of stock proxies. One Process stream
per HTTP transaction, turned into the traces a tap sink would have received.

The tapped proxy's traffic never waits for us. In observability mode Envoy does not wait for
answers, but its side-stream flow control stalls large or long transfers on the data path
when the server stops reading (and without flow control, Envoy's memory grows instead). So
this handler always keeps reading, and when there is no room it drops whole transactions,
counted by reason, instead of holding the stream back:
- a transaction whose bodies would take the bytes held for all transactions being assembled
  over `extproc_assembly_max_bytes` is dropped (`assembly_full`) and its stream read to the end;
- a finished transaction (or a streamed piece) that finds the writers' queue full is dropped
  (`queue_full`); `try_put` never waits.

A transaction is written when its response's last part arrives (headers or body with
end_of_stream, or trailers), and the stream is then ended at once with OK, which frees Envoy's
side sooner than its `deferred_close_timeout`. A stream that ends first (Envoy's reset after
its deferred close: an aborted transaction, or one Envoy gave up on) is still written, counted
as incomplete; it is the only loss signal Envoy gives.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from tap_emulator._proto.envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
)
from tap_emulator.bounded import BoundedLru
from tap_emulator.derive.naming import Identity, direction_from_tap_id, namespace_from_node
from tap_emulator.ingest.extproc_capture import Assembly, Pieces, Proxy, read_metadata
from tap_emulator.ingest.handoff import Handoff, Sender
from tap_emulator.ingest.streams import (
    OpenStream,
    Refusal,
    StreamRegistry,
    forget_frames,
    read_message,
)
from tap_emulator.ingest.wire_budget import MalformedError, OverBudgetError, WireBudget
from tap_emulator.labels import (
    Direction,
    RejectReason,
    Source,
    StreamOutcome,
    TransactionDrop,
    TransactionOutcome,
)
from tap_emulator.observe.logs import ThrottledLog
from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.queue import WriteQueue

log = logging.getLogger(__name__)

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
METHOD = "Process"

# Proxies seen per connection (gRPC peer, address and port): streams without attributes (an
# Envoy-generated reply has no request part) are named after the proxy that sent them.
_KNOWN_CONNECTIONS = 10_000
_CONNECTION_IDLE_SECONDS = 600.0
_SHUTDOWN = "tap-emulator is shutting down; this transaction was written as far as it came"


@dataclass(frozen=True, slots=True)
class ExtProcLimits:
    max_message_bytes: int = 16 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    assembly_max_bytes: int = 256 * 1024 * 1024
    budget: WireBudget = WireBudget()


class _RefusedMessageError(Exception):
    def __init__(self, reason: RejectReason, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.reason = reason
        self.code = code
        self.details = details


@dataclass(slots=True, eq=False)
class _Transaction:
    """One stream's transaction and what became of it."""

    assembly: Assembly
    identity: Identity
    number: int
    origin: Sender
    dropped: TransactionDrop | None = None
    handed: bool = False  # some of it is with the writers
    concluded: bool = False


class ExtProcessor:
    """Serves Process: read every part, assemble, hand complete transactions to the writers."""

    def __init__(
        self,
        handoff: Handoff,
        queue: WriteQueue,
        registry: StreamRegistry,
        metrics: Metrics,
        default_direction: Direction,
        limits: ExtProcLimits = ExtProcLimits(),
    ) -> None:
        self._handoff = handoff
        self._queue = queue
        self._registry = registry
        self._metrics = metrics
        self._default_direction = default_direction
        self._limits = limits
        self._proxies: BoundedLru[str, Proxy] = BoundedLru(
            _KNOWN_CONNECTIONS, _CONNECTION_IDLE_SECONDS
        )
        self._held_bytes = 0
        metrics.extproc_assembly_bytes.set_function(lambda: self._held_bytes)
        metrics.extproc_assembly_capacity_bytes.set(limits.assembly_max_bytes)
        self._warnings = ThrottledLog(log)
        self.accepted = 0  # transactions handed to the writers

    def rpc_handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        handler = grpc.stream_stream_rpc_method_handler(self.process)
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})

    async def process(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        # Messages are read through `context` (streams.read_message), never `requests`.
        metrics = self._metrics
        metrics.stream_calls += 1
        if self._registry.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTDOWN)
        peer = context.peer()
        opened = self._registry.open(Source.EXT_PROC, peer)
        if isinstance(opened, Refusal):
            metrics.streams_refused[Source.EXT_PROC, opened.reason].inc()
            self._warnings.warning(
                opened.reason.value, "refused an ext_proc stream from %s: %s", peer, opened.details
            )
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, opened.details)
        assert isinstance(opened, OpenStream)
        stream = opened
        metrics.streams_opened[Source.EXT_PROC].inc()
        transaction = self._start(stream, context)
        outcome = StreamOutcome.INTERNAL
        try:
            outcome = await self._read(stream, transaction, peer, context)
        except _RefusedMessageError as refused:
            outcome = (
                StreamOutcome.INVALID_ARGUMENT
                if refused.code is grpc.StatusCode.INVALID_ARGUMENT
                else StreamOutcome.RESOURCE_EXHAUSTED
            )
            metrics.messages_rejected[Source.EXT_PROC, refused.reason].inc()
            self._warnings.warning(
                refused.reason.value, "ended an ext_proc stream from %s: %s", peer, refused.details
            )
            forget_frames(refused)
            await context.abort(refused.code, refused.details)
        except asyncio.CancelledError:
            # Envoy resets every stream it closes (right after its end), or we ended it.
            outcome = stream.ended_by or StreamOutcome.CANCELLED
            raise
        finally:
            full = (
                TransactionDrop.SHUTDOWN if self._registry.closing else TransactionDrop.QUEUE_FULL
            )
            self._conclude(transaction, full)
            self._registry.close(stream)
            self._handoff.forget_stream(stream.number)
            metrics.streams_ended[Source.EXT_PROC, outcome].inc()

    # --- one stream ---------------------------------------------------------------------

    def _start(
        self, stream: OpenStream, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> _Transaction:
        point, tracer = read_metadata(
            context.invocation_metadata() or (), max_body_bytes=self._limits.max_body_bytes
        )
        # Envoy's ext_proc has no numeric id for a transaction: a random one stands in where a
        # tap would use Envoy's stream id (in a file name only when no header gives a trace id;
        # it needs to be unique, not secret).
        assembly = Assembly(point, tracer, random.getrandbits(63))
        direction = direction_from_tap_id(point.tap_id)
        identity = Identity(direction or self._default_direction, direction is not None, None)
        return _Transaction(assembly, identity, stream.number, Sender(tap_id=point.tap_id))

    async def _read(
        self,
        stream: OpenStream,
        transaction: _Transaction,
        peer: str,
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> StreamOutcome:
        assembly = transaction.assembly
        index = received_bytes = 0
        try:
            while (raw := await read_message(context)) is not None:
                index += 1
                received_bytes += len(raw)
                request = self._decode(raw, index)
                stream.active()
                held_before = assembly.held_bytes
                had_proxy = assembly.proxy is not None
                pieces = assembly.add(request, time.time())
                if not had_proxy:
                    self._learn_identity(transaction, peer, index == 1)
                if transaction.dropped is None:
                    if pieces:
                        self._hand_over(transaction, pieces, len(raw))
                    elif assembly.held_bytes > held_before:
                        self._hold(transaction, assembly.held_bytes - held_before)
                if assembly.complete:
                    self._conclude(transaction, TransactionDrop.QUEUE_FULL)
                    return StreamOutcome.OK
                del raw, request  # nothing of it is held while the next message is awaited
            return StreamOutcome.UNFINISHED
        finally:
            self._metrics.received_bytes[Source.EXT_PROC].inc(received_bytes)

    def _decode(self, raw: bytes, index: int) -> ProcessingRequest:
        limit = self._limits.max_message_bytes
        if len(raw) > limit:
            raise _RefusedMessageError(
                RejectReason.TOO_LARGE,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message {index} on this stream is {len(raw)} bytes, over max_message_bytes "
                f"({limit})",
            )
        try:
            self._limits.budget.check(raw, ProcessingRequest.DESCRIPTOR)
            return ProcessingRequest.FromString(raw)
        except OverBudgetError as exc:
            raise _RefusedMessageError(
                RejectReason.TOO_MANY_HEADERS,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message {index} on this stream has {exc}",
            ) from exc
        except (DecodeError, MalformedError) as exc:
            raise _RefusedMessageError(
                RejectReason.DECODE,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"message {index} on this stream is not an envoy.service.ext_proc.v3."
                f"ProcessingRequest ({exc})",
            ) from exc

    def _learn_identity(self, transaction: _Transaction, peer: str, first: bool) -> None:
        """Who sent the stream: its attributes, or else (asked once, at its first message)
        the proxy last seen on its connection."""
        proxy = transaction.assembly.proxy
        if proxy is not None:
            self._proxies.put(peer, proxy)
        elif first:
            proxy = self._proxies.get(peer)
            if proxy is None:
                return
        else:
            return
        identity = transaction.identity
        direction, known = identity.direction, identity.direction_known
        if not known and proxy.listener_direction is not None:
            direction, known = proxy.listener_direction, True
        namespace = namespace_from_node(proxy.node_id, proxy.cluster, proxy.namespace)
        transaction.identity = Identity(direction, known, namespace)
        tap_id = transaction.origin.tap_id
        if direction_from_tap_id(tap_id) is None:
            # A tool reads the direction from the tap id's last token: give it one.
            tap_id = f"{tap_id}-{direction.value}" if tap_id else f"ext-proc-{direction.value}"
        transaction.origin = Sender(proxy.node_id, proxy.cluster, proxy.namespace, tap_id)

    # --- what is kept -------------------------------------------------------------------

    def _hold(self, transaction: _Transaction, more_bytes: int) -> None:
        """Account for body bytes a buffered transaction now holds, or drop it if that is
        more than the bytes left for assembly."""
        if self._held_bytes + more_bytes > self._limits.assembly_max_bytes:
            self._drop(transaction, TransactionDrop.ASSEMBLY_FULL)
            return
        self._held_bytes += more_bytes

    def _hand_over(self, transaction: _Transaction, pieces: Pieces, size: int) -> None:
        """Streamed pieces go to the writers at once, or the rest of the transaction is
        dropped: a transaction with a hole is counted, never held back."""
        for piece in pieces:
            group = self._handoff.plan(
                piece,
                transaction.identity,
                transaction.number,
                Source.EXT_PROC,
                size,
                origin=transaction.origin,
            )
            if group and not self._queue.try_put(group):
                self._drop(transaction, TransactionDrop.QUEUE_FULL)
                return
            transaction.handed = True

    def _conclude(self, transaction: _Transaction, when_full: TransactionDrop) -> None:
        """Once per stream, when its transaction is complete or the stream is over: a buffered
        transaction goes to the writers (finished or not), and how it ended is counted."""
        if transaction.concluded:
            return
        transaction.concluded = True
        assembly = transaction.assembly
        if transaction.dropped is None and not assembly.point.streaming and assembly.parts:
            group = self._handoff.plan(
                assembly.buffered_trace(),
                transaction.identity,
                transaction.number,
                Source.EXT_PROC,
                0,
                origin=transaction.origin,
            )
            if self._queue.try_put(group):
                transaction.handed = True
            else:
                self._drop(transaction, when_full)
        self._held_bytes -= assembly.release()
        if transaction.dropped is not None or not transaction.handed:
            return
        self.accepted += 1
        complete = (
            TransactionOutcome.COMPLETE if assembly.complete else TransactionOutcome.INCOMPLETE
        )
        self._metrics.extproc_transactions[complete].inc()
        for half in assembly.truncated:
            self._metrics.extproc_truncated[half].inc()

    def _drop(self, transaction: _Transaction, reason: TransactionDrop) -> None:
        if transaction.dropped is not None:
            return
        transaction.dropped = reason
        self._held_bytes -= transaction.assembly.release()
        self._metrics.extproc_dropped[reason].inc()
        self._warnings.warning(
            f"drop-{reason.value}",
            "dropped an ext_proc transaction (%s); the proxies are never held back",
            reason.value,
        )
