"""`tap-emulator relay`: forward a stock Envoy's admin `/tap` stream to a TapSinkService.

Stock Envoy cannot stream taps over gRPC (the `streaming_grpc` sink is not implemented), but
its admin endpoint can stream them as JSON to whoever attaches with `POST /tap`, for a tap
filter configured with `admin_config`. The relay attaches there, turns each JSON trace into
a `StreamTapsRequest` and sends them on one long-lived StreamTaps call:

    Envoy admin /tap (HTTP/1.1, chunked JSON) -> reader -> bounded queue -> sender -> gRPC

- The identifier (first message of each call) is Envoy's own node from `GET /server_info`
  and the tap id `tap-emulator-relay-<direction>`. `trace_id` is the segment's own id for
  streamed traces, a counter for buffered ones.
- The queue is bounded in traces and bytes. When it is full the reader stops reading from
  Envoy: TCP flow control then holds Envoy's writes, and Envoy keeps the traces it could
  not send in its own memory (unbounded, as measured in docs/relay.md).
- Either side may go away: the reader re-attaches and the sender reconnects, each with
  capped exponential backoff. Traces already read stay queued meanwhile. The sender watches
  the emulator's gRPC health: when it reports NOT_SERVING (a drain, before a restart), the
  relay half-closes its call and waits for the answer, so everything written is accepted.
  What can be lost is listed in docs/relay.md.
- On SIGINT/SIGTERM (or after `--max-traces`) it stops reading, forwards everything read,
  half-closes, waits for the emulator's OK and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
    from tap_emulator.tools._envoy_admin import AdminAddress
    from tap_emulator.tools._tap_client import Outcome, TapCall

log = logging.getLogger("tap_emulator.relay")

EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_CONFIG_ID = "tap-emulator"
KiB = 1024
MiB = 1024 * KiB
_POLL_SECONDS = 0.1
_HEALTH_TIMEOUT_SECONDS = 5.0
_LOGGED_BAD_TRACES = 5


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "relay",
        help="attach to a stock Envoy's admin /tap and stream its traces to a TapSinkService",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--envoy-admin",
        required=True,
        metavar="URL",
        help="Envoy's admin endpoint, e.g. http://127.0.0.1:15000",
    )
    parser.add_argument("--to", required=True, metavar="HOST:PORT", help="the TapSinkService")
    parser.add_argument(
        "--config-id",
        default=DEFAULT_CONFIG_ID,
        help=f"the tap filter's admin_config.config_id (default: {DEFAULT_CONFIG_ID})",
    )
    parser.add_argument(
        "--direction",
        choices=("inbound", "outbound"),
        default="inbound",
        help="tap_id becomes tap-emulator-relay-<direction> (default: inbound)",
    )
    tap = parser.add_argument_group("tap configuration (posted to Envoy)")
    mode = tap.add_mutually_exclusive_group()
    mode.add_argument(
        "--buffered",
        dest="streamed",
        action="store_false",
        help="one trace per transaction, sent when it ends (the default)",
    )
    mode.add_argument(
        "--streamed",
        dest="streamed",
        action="store_true",
        help="one segment per headers, body chunk or trailers, sent as they happen",
    )
    tap.add_argument(
        "--match-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="tap only requests with this header value (repeatable: all must match); "
        "default: tap everything",
    )
    tap.add_argument(
        "--match-json",
        metavar="JSON",
        help="a full envoy.config.tap.v3.MatchPredicate as JSON (replaces --match-header)",
    )
    tap.add_argument(
        "--max-buffered-rx-bytes",
        type=int,
        default=MiB,
        help="request body bytes kept per trace (streamed: per chunk) (default: 1048576)",
    )
    tap.add_argument(
        "--max-buffered-tx-bytes",
        type=int,
        default=MiB,
        help="response body bytes kept per trace (streamed: per chunk) (default: 1048576)",
    )
    limits = parser.add_argument_group("limits and behaviour")
    limits.add_argument(
        "--queue-max-items", type=int, default=10_000, help="traces queued (default: 10000)"
    )
    limits.add_argument(
        "--queue-max-bytes",
        type=int,
        default=64 * MiB,
        help="bytes of traces queued (default: 67108864)",
    )
    limits.add_argument(
        "--max-trace-bytes",
        type=int,
        default=64 * MiB,
        help="longest JSON trace accepted from Envoy; longer ones are skipped and counted "
        "(default: 67108864)",
    )
    limits.add_argument(
        "--max-traces", type=int, default=0, help="stop after N traces (default: 0, never)"
    )
    limits.add_argument(
        "--backoff-initial-seconds",
        type=float,
        default=0.5,
        help="first reconnect delay (default: 0.5)",
    )
    limits.add_argument(
        "--backoff-max-seconds",
        type=float,
        default=10.0,
        help="longest reconnect delay (default: 10)",
    )
    limits.add_argument(
        "--drain-timeout-seconds",
        type=float,
        default=30.0,
        help="on stop, how long to keep trying to forward what was read (default: 30)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="(default: info)",
    )
    parser.set_defaults(run=main, streamed=False)


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything the relay needs, validated once."""

    envoy_admin: AdminAddress
    target: str
    config_id: str = DEFAULT_CONFIG_ID
    direction: str = "inbound"
    streamed: bool = False
    match: dict[str, Any] = field(default_factory=lambda: {"any_match": True})
    max_buffered_rx_bytes: int = MiB
    max_buffered_tx_bytes: int = MiB
    queue_max_items: int = 10_000
    queue_max_bytes: int = 64 * MiB
    max_trace_bytes: int = 64 * MiB
    max_traces: int = 0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 10.0
    drain_timeout_seconds: float = 30.0

    @property
    def tap_id(self) -> str:
        return f"tap-emulator-relay-{self.direction}"

    @property
    def mode(self) -> str:
        return "streamed" if self.streamed else "buffered"

    def tap_request(self) -> bytes:
        """The body of `POST /tap`."""
        output = {
            "sinks": [{"streaming_admin": {}, "format": "JSON_BODY_AS_BYTES"}],
            "streaming": self.streamed,
            "max_buffered_rx_bytes": self.max_buffered_rx_bytes,
            "max_buffered_tx_bytes": self.max_buffered_tx_bytes,
        }
        body = {
            "config_id": self.config_id,
            "tap_config": {"match": self.match, "output_config": output},
        }
        return json.dumps(body).encode()


def header_match(pairs: list[str]) -> dict[str, Any]:
    """`NAME=VALUE` pairs as a MatchPredicate (all must match); any_match when empty."""
    if not pairs:
        return {"any_match": True}
    headers = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--match-header expects NAME=VALUE, got {pair!r}")
        headers.append({"name": name.strip().lower(), "string_match": {"exact": value}})
    return {"http_request_headers_match": {"headers": headers}}


def config_from(args: argparse.Namespace) -> RelayConfig:
    from tap_emulator.tools._envoy_admin import AdminAddress
    from tap_emulator.tools._tap_client import parse_target

    if args.match_json:
        try:
            match = json.loads(args.match_json)
        except ValueError as exc:
            raise ValueError(f"--match-json is not JSON: {exc}") from exc
        if not isinstance(match, dict):
            raise ValueError("--match-json must be a JSON object (a MatchPredicate)")
    else:
        match = header_match(args.match_header)
    positive = {
        "--max-buffered-rx-bytes": args.max_buffered_rx_bytes,
        "--max-buffered-tx-bytes": args.max_buffered_tx_bytes,
        "--queue-max-items": args.queue_max_items,
        "--queue-max-bytes": args.queue_max_bytes,
        "--max-trace-bytes": args.max_trace_bytes,
        "--backoff-initial-seconds": args.backoff_initial_seconds,
        "--backoff-max-seconds": args.backoff_max_seconds,
    }
    for flag, value in positive.items():
        if value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.max_traces < 0 or args.drain_timeout_seconds < 0:
        raise ValueError("--max-traces and --drain-timeout-seconds must not be negative")
    return RelayConfig(
        envoy_admin=AdminAddress.parse(args.envoy_admin),
        target=parse_target(args.to),
        config_id=args.config_id,
        direction=args.direction,
        streamed=args.streamed,
        match=match,
        max_buffered_rx_bytes=args.max_buffered_rx_bytes,
        max_buffered_tx_bytes=args.max_buffered_tx_bytes,
        queue_max_items=args.queue_max_items,
        queue_max_bytes=args.queue_max_bytes,
        max_trace_bytes=args.max_trace_bytes,
        max_traces=args.max_traces,
        backoff_initial_seconds=args.backoff_initial_seconds,
        backoff_max_seconds=args.backoff_max_seconds,
        drain_timeout_seconds=args.drain_timeout_seconds,
    )


# --- pieces -----------------------------------------------------------------------------


def trace_from_json(raw: bytes) -> TraceWrapper:
    """One JSON TraceWrapper as Envoy prints it, in our TraceWrapper; fields this version
    does not know are ignored. Raises ValueError if it is not one."""
    from google.protobuf import json_format

    from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper

    trace = TraceWrapper()
    try:
        json_format.Parse(raw.decode("utf-8"), trace, ignore_unknown_fields=True)
    except (UnicodeDecodeError, json_format.ParseError) as exc:
        raise ValueError(str(exc)) from exc
    return trace


@dataclass(frozen=True, slots=True)
class Item:
    """One trace read from Envoy, ready to send: who sent it, its id, its bytes."""

    identifier: bytes
    trace_id: int
    trace: bytes

    @property
    def size(self) -> int:
        return len(self.trace)


class TraceQueue:
    """FIFO between reader and sender, bounded in items and bytes; full means `put` waits.

    One item larger than the byte bound is admitted alone into an empty queue."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._changed = asyncio.Condition()
        self.full_waits = 0
        self.full_seconds = 0.0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self._bytes + size <= self.max_bytes

    async def put(self, item: Item) -> None:
        async with self._changed:
            if not self._fits(item.size):
                self.full_waits += 1
                started = time.monotonic()
                try:
                    await self._changed.wait_for(lambda: self._fits(item.size))
                finally:
                    self.full_seconds += time.monotonic() - started
            self._append(item)
            self._changed.notify_all()

    def force(self, item: Item) -> None:
        """Queue an item that was already read, whatever the bound (used on stop only)."""
        self._append(item)

    def _append(self, item: Item) -> None:
        self._items.append(item)
        self._bytes += item.size

    async def get(self, timeout_seconds: float) -> Item | None:
        """The oldest item, or None if none came within `timeout`."""
        async with self._changed:
            if not self._items:
                try:
                    async with asyncio.timeout(timeout_seconds):
                        await self._changed.wait_for(lambda: bool(self._items))
                except TimeoutError:
                    return None
            item = self._items.popleft()
            self._bytes -= item.size
            self._changed.notify_all()
            return item


class Backoff:
    """Capped exponential backoff with jitter; `reset` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not security

    def reset(self) -> None:
        self._next = self.initial


@dataclass
class RelayStats:
    """Counters reported when the relay stops (and as it goes, in its log)."""

    read: int = 0
    forwarded: int = 0
    confirmed: int = 0
    unconfirmed: int = 0
    dropped_oversize: int = 0
    dropped_undecodable: int = 0
    cut_short: int = 0
    stray_bytes: int = 0
    attaches: int = 0
    streams: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_oversize + self.dropped_undecodable + self.cut_short


class _RelayRefusedError(Exception):
    """The first attach was refused: nothing to retry (a configuration problem)."""


# --- the upstream call ------------------------------------------------------------------


class _Upstream:
    """One channel and StreamTaps call to the emulator, and a watch on its health."""

    def __init__(self, target: str, identifier: bytes) -> None:
        self.target = target
        self.identifier = identifier
        self.draining = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._call: TapCall | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def written(self) -> int:
        return self._call.written if self._call is not None else 0

    async def open(self) -> None:
        """Connect, check the emulator is ready, open the call; raises ConnectionError."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from tap_emulator.tools._tap_client import TapCall, open_channel

        self._channel = open_channel(self.target)
        health = health_pb2_grpc.HealthStub(self._channel)
        try:
            answer = await health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=_HEALTH_TIMEOUT_SECONDS
            )
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                raise ConnectionError("the emulator is not ready (health: NOT_SERVING)")
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise ConnectionError(f"{exc.code().name}: {exc.details()}") from exc
        self._call = TapCall(self._channel)
        self._watch = asyncio.create_task(self._watch_health(health))

    async def _watch_health(self, health: Any) -> None:
        import grpc
        from grpc_health.v1 import health_pb2

        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for answer in health.Watch(health_pb2.HealthCheckRequest(service="")):
                if answer.status != health_pb2.HealthCheckResponse.SERVING:
                    self.draining.set()
                    return

    async def write(self, item: Item) -> None:
        from tap_emulator.tools._tap_client import encode_request

        assert self._call is not None
        first = self._call.written == 0
        await self._call.write(
            encode_request(item.trace, item.trace_id, self.identifier if first else b"")
        )

    async def finish(self) -> Outcome:
        from tap_emulator.tools._tap_client import Outcome

        outcome = Outcome("OK", "") if self._call is None else await self._call.finish()
        await self.close()
        return outcome

    async def failure(self, error: BaseException) -> Outcome:
        """Why the call failed, once it has; then close everything."""
        from tap_emulator.tools._tap_client import outcome_of

        outcome = outcome_of(error)
        if self._call is not None and outcome.code == "UNKNOWN" and self._call.done():
            with contextlib.suppress(asyncio.CancelledError):
                outcome = await self._call.ended()
        await self.close()
        return outcome

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._call is not None and not self._call.done():
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None


# --- the relay --------------------------------------------------------------------------


class Relay:
    """Reader (Envoy admin -> queue) and sender (queue -> emulator), run together."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.stats = RelayStats()
        self.queue = TraceQueue(config.queue_max_items, config.queue_max_bytes)
        self.fatal: str | None = None
        self._stopping = asyncio.Event()
        self._reading_done = asyncio.Event()
        self._buffered_ids = 0
        self._reader: asyncio.Task[None] | None = None
        self._node_id = ""

    def stop(self, reason: str) -> None:
        """Stop reading from Envoy; what was read is still forwarded."""
        if self._stopping.is_set():
            return
        log.info("relay stopping (%s): forwarding %d queued traces", reason, len(self.queue))
        self._stopping.set()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()

    @property
    def unsent(self) -> int:
        return len(self.queue)

    async def run(self) -> int:
        config = self.config
        log.info(
            "relay starting envoy_admin=%s config_id=%s mode=%s tap_id=%s to=%s "
            "queue_max_items=%d queue_max_bytes=%d",
            config.envoy_admin,
            config.config_id,
            config.mode,
            config.tap_id,
            config.target,
            config.queue_max_items,
            config.queue_max_bytes,
        )
        self._reader = asyncio.create_task(self._read_envoy())
        sender = asyncio.create_task(self._send())
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._reading_done.set()
        self._stopping.set()
        try:
            async with asyncio.timeout(config.drain_timeout_seconds):
                await sender
        except TimeoutError:
            log.error(
                "relay: could not forward everything within %.0fs; %d traces read from "
                "Envoy were not sent",
                config.drain_timeout_seconds,
                self.unsent,
            )
            self._log_totals()
            return EXIT_FAILED
        self._log_totals()
        if self.fatal is not None:
            log.error("relay: %s", self.fatal)
            return EXIT_FAILED
        return 0

    def _log_totals(self) -> None:
        s = self.stats
        log.info(
            "relay stopped read=%d forwarded=%d confirmed=%d unconfirmed=%d unsent=%d "
            "dropped=%d (oversize=%d undecodable=%d cut_short=%d) stray_bytes=%d "
            "attaches=%d streams=%d queue_full_waits=%d queue_full_seconds=%.2f",
            s.read,
            s.forwarded,
            s.confirmed,
            s.unconfirmed,
            self.unsent,
            s.dropped,
            s.dropped_oversize,
            s.dropped_undecodable,
            s.cut_short,
            s.stray_bytes,
            s.attaches,
            s.streams,
            self.queue.full_waits,
            self.queue.full_seconds,
        )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    # --- reading from Envoy ---------------------------------------------------------------

    async def _read_envoy(self) -> None:
        from tap_emulator.captures.json_objects import JsonObjectSplitter
        from tap_emulator.tools._envoy_admin import AdminError, TapRefusedError, attach_tap

        config = self.config
        splitter = JsonObjectSplitter(config.max_trace_bytes)
        backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        body = config.tap_request()
        while not self._stopping.is_set():
            stream = None
            try:
                identifier = await self._identifier()
                stream = await attach_tap(config.envoy_admin, body)
                self.stats.attaches += 1
                log.info(
                    "relay attached envoy_admin=%s config_id=%s mode=%s tap_id=%s node=%s "
                    "attach=%d%s",
                    config.envoy_admin,
                    config.config_id,
                    config.mode,
                    config.tap_id,
                    self._node_id,
                    self.stats.attaches,
                    "" if stream.confirmed else " (Envoy did not confirm it yet)",
                )
                async for piece in stream.pieces():
                    backoff.reset()
                    await self._take(splitter.feed(piece), identifier)
                    self.stats.stray_bytes = splitter.stray_bytes
                    self.stats.dropped_oversize = splitter.dropped
                    if config.max_traces and self.stats.read >= config.max_traces:
                        self.stop(f"--max-traces {config.max_traces} reached")
                        return
                reason = "Envoy ended the /tap stream"
            except TapRefusedError as exc:
                if exc.already_attached:
                    hint = (
                        "another /tap stream is already attached to this Envoy (only one is "
                        "allowed): stop the other relay or admin client first"
                    )
                else:
                    hint = f"Envoy refused the tap configuration: {exc.message}"
                if self.stats.attaches == 0:
                    self.fatal = hint
                    self._stopping.set()
                    return
                reason = hint
            except AdminError as exc:
                reason = str(exc)
            finally:
                if stream is not None:
                    await stream.close()
                if splitter.reset():
                    self.stats.cut_short += 1
            if self._stopping.is_set():
                return
            delay = backoff.next()
            log.warning("relay: %s; attaching again in %.1fs", reason, delay)
            await self._pause(delay)

    async def _identifier(self) -> bytes:
        from tap_emulator.tools._envoy_admin import server_node
        from tap_emulator.tools._tap_client import identifier_field, node_from_json

        node = node_from_json(await server_node(self.config.envoy_admin))
        self._node_id = node.id
        return identifier_field(node, self.config.tap_id)

    async def _take(self, objects: list[bytes], identifier: bytes) -> None:
        """Convert and queue what one piece completed. Everything converted is queued even
        if the reader is cancelled while waiting for room: it was read."""
        converted = (self._convert(raw, identifier) for raw in objects)
        ready = [item for item in converted if item is not None]
        for index, item in enumerate(ready):
            try:
                await self.queue.put(item)
            except asyncio.CancelledError:
                for rest in ready[index:]:
                    self.queue.force(rest)
                self.stats.read += len(ready) - index
                raise
            self.stats.read += 1

    def _convert(self, raw: bytes, identifier: bytes) -> Item | None:
        try:
            trace = trace_from_json(raw)
        except ValueError as exc:
            self.stats.dropped_undecodable += 1
            if self.stats.dropped_undecodable <= _LOGGED_BAD_TRACES:
                log.warning("relay: skipped a trace that is not a TraceWrapper: %s", exc)
            return None
        kind = trace.WhichOneof("trace")
        if kind == "http_streamed_trace_segment":
            trace_id = trace.http_streamed_trace_segment.trace_id
        elif kind == "socket_streamed_trace_segment":
            trace_id = trace.socket_streamed_trace_segment.trace_id
        else:
            self._buffered_ids += 1
            trace_id = self._buffered_ids
        return Item(identifier, trace_id, trace.SerializeToString())

    # --- sending to the emulator ----------------------------------------------------------

    async def _next_item(self, upstream: _Upstream | None) -> Item | None:
        """The next item; None once reading is over and the queue is empty. While waiting,
        a draining emulator gets its call closed cleanly."""
        while True:
            item = await self.queue.get(_POLL_SECONDS)
            if item is not None:
                return item
            if self._reading_done.is_set() and not len(self.queue):
                return None
            if upstream is not None and upstream.draining.is_set():
                return None

    async def _send(self) -> None:
        config = self.config
        backoff = Backoff(config.backoff_initial_seconds, config.backoff_max_seconds)
        upstream: _Upstream | None = None
        pending: Item | None = None
        try:
            while True:
                if pending is None:
                    pending = await self._next_item(upstream)
                if upstream is not None and (
                    upstream.draining.is_set()
                    or (pending is not None and pending.identifier != upstream.identifier)
                ):
                    why = "the emulator is draining" if upstream.draining.is_set() else "new node"
                    await self._finish(upstream, why)
                    upstream = None
                if pending is None:
                    if self._reading_done.is_set() and not len(self.queue):
                        break
                    continue
                if upstream is None:
                    upstream = await self._connect(pending.identifier, backoff)
                try:
                    await upstream.write(pending)
                except Exception as exc:
                    outcome = await upstream.failure(exc)
                    self.stats.unconfirmed += upstream.written
                    delay = backoff.next()
                    log.warning(
                        "relay: stream to %s failed: %s %s; %d traces written on it may not all "
                        "have been accepted; reconnecting in %.1fs",
                        config.target,
                        outcome.code,
                        outcome.details,
                        upstream.written,
                        delay,
                    )
                    upstream = None
                    await asyncio.sleep(delay)
                    continue
                pending = None
                self.stats.forwarded += 1
            if upstream is not None:
                await self._finish(upstream, "done")
                upstream = None
        finally:
            # Only when cancelled (the drain timed out): put back what was not sent.
            if pending is not None:
                self.queue.force(pending)
            if upstream is not None:
                self.stats.unconfirmed += upstream.written
                await upstream.close()

    async def _connect(self, identifier: bytes, backoff: Backoff) -> _Upstream:
        while True:
            upstream = _Upstream(self.config.target, identifier)
            try:
                await upstream.open()
            except ConnectionError as exc:
                await upstream.close()
                delay = backoff.next()
                log.warning(
                    "relay: emulator at %s unavailable (%s); retrying in %.1fs",
                    self.config.target,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.stats.streams += 1
            log.info("relay streaming to=%s stream=%d", self.config.target, self.stats.streams)
            return upstream

    async def _finish(self, upstream: _Upstream, why: str) -> None:
        written = upstream.written
        outcome = await upstream.finish()
        if outcome.ok:
            self.stats.confirmed += written
            log.info("relay: stream closed (%s): %d traces confirmed on disk", why, written)
        else:
            self.stats.unconfirmed += written
            log.warning(
                "relay: stream closed (%s) with %s %s; %d traces written on it may not all "
                "have been accepted",
                why,
                outcome.code,
                outcome.details,
                written,
            )


# --- the command ------------------------------------------------------------------------


async def _run(config: RelayConfig) -> int:
    relay = Relay(config)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.error(
                "second %s: exiting now with %d traces read and not sent",
                signal.Signals(signum).name,
                relay.unsent,
            )
            logging.shutdown()
            sys.stderr.flush()
            import os

            os._exit(EXIT_FAILED)
        relay.stop(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    return await relay.run()


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"tap-emulator relay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(args.log_level.upper())
    return asyncio.run(_run(config))
