"""The relay's admin side: who this Envoy is (`GET /server_info`), its `/tap` stream, and
the traces in it, split, weighed, converted and queued, or counted as skipped.

A lost stream is attached again with backoff, fetching the node anew. An Envoy that
refuses the tap on the first attach, or answers `/server_info` as no stock Envoy does
(a node that is not one, JSON too large or nested too deeply), is refused in turn:
`EnvoyRefusedError` says why, and the relay forwards what it read and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tap_emulator.captures.json_objects import JsonObjectSplitter
from tap_emulator.config import format_size
from tap_emulator.tools._envoy_admin import (
    AdminError,
    MalformedAnswerError,
    TapRefusedError,
    attach_tap,
    server_node,
)
from tap_emulator.tools._tap_client import identifier_field, node_from_json
from tap_emulator.tools.relay.backoff import Backoff
from tap_emulator.tools.relay.convert import TraceConverter
from tap_emulator.tools.relay.queue import Item, TraceQueue
from tap_emulator.tools.relay.settings import VALUE_COST_BYTES, RelaySettings
from tap_emulator.tools.relay.stats import RelayStats
from tap_emulator.tools.relay.tap_config import tap_request

log = logging.getLogger("tap_emulator.relay")

_LOGGED_BAD_TRACES = 5


class EnvoyRefusedError(Exception):
    """This Envoy cannot be relayed; the message says why and what to do."""


class EnvoyReader:
    """Attaches to Envoy's `/tap` (again after each loss) and queues every trace it reads."""

    def __init__(
        self,
        settings: RelaySettings,
        queue: TraceQueue,
        stats: RelayStats,
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.stats = stats
        self._stopping = stopping
        self._splitter = JsonObjectSplitter(settings.max_trace_bytes, VALUE_COST_BYTES)
        self._converter = TraceConverter()
        self._backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self._node_id = ""
        self._said_full = False

    async def run(self) -> str:
        """Read until stopped or `--max-traces`; returns why reading ended. Raises
        EnvoyRefusedError for an Envoy that cannot be relayed."""
        settings = self.settings
        body = tap_request(settings)
        while not self._stopping.is_set():
            stream = None
            try:
                identifier = await self._identifier()
                stream = await attach_tap(settings.admin, body)
                self.stats.attaches += 1
                self._log_attached(stream.confirmed)
                async for piece in stream.pieces():
                    self._backoff.reset()
                    await self._take(self._splitter.feed(piece), identifier)
                    self.stats.stray_bytes = self._splitter.stray_bytes
                    self.stats.dropped_oversize = self._splitter.dropped
                    if settings.max_traces and self.stats.read >= settings.max_traces:
                        return f"--max-traces {settings.max_traces} reached"
                reason = "Envoy ended the /tap stream"
            except TapRefusedError as exc:
                reason = _refusal_hint(exc)
                if self.stats.attaches == 0:
                    raise EnvoyRefusedError(reason) from None
            except MalformedAnswerError as exc:
                raise EnvoyRefusedError(
                    f"{exc}: no stock Envoy answers so; refusing this Envoy"
                ) from None
            except AdminError as exc:
                reason = str(exc)
            finally:
                if stream is not None:
                    await stream.close()
                if self._splitter.reset():
                    self.stats.cut_short += 1
            if self._stopping.is_set():
                break
            delay = self._backoff.next()
            log.warning("relay: %s; attaching again in %.1fs", reason, delay)
            await self._pause(delay)
        return "stopped"

    async def _identifier(self) -> bytes:
        """The serialized identifier for this Envoy: its node and our tap id."""
        admin = self.settings.admin
        try:
            node = node_from_json(await server_node(admin))
        except ValueError as exc:
            raise MalformedAnswerError(
                f"Envoy admin's /server_info at {admin}: its node cannot be read: {exc}"
            ) from None
        self._node_id = node.id
        return identifier_field(node, self.settings.tap_id)

    def _log_attached(self, confirmed: bool) -> None:
        settings = self.settings
        log.info(
            "relay attached envoy_admin=%s config_id=%s mode=%s tap_id=%s node=%s attach=%d%s",
            settings.admin,
            settings.config_id,
            settings.mode,
            settings.tap_id,
            self._node_id,
            self.stats.attaches,
            "" if confirmed else " (Envoy did not confirm it yet)",
        )

    async def _take(self, objects: list[bytes], identifier: bytes) -> None:
        """Convert and queue what one piece completed. Everything converted is queued even
        if the reader is cancelled while waiting for room: it was read."""
        ready = [item for raw in objects if (item := self._convert(raw, identifier)) is not None]
        for index, item in enumerate(ready):
            if not self._said_full and self.queue.is_full_for(item):
                self._said_full = True
                log.info(
                    "relay: queue full (%d traces, %s): reading from Envoy waits for the "
                    "emulator, and Envoy holds what it cannot write; further waits are counted",
                    len(self.queue),
                    format_size(self.queue.bytes),
                )
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
            item = self._converter.item(raw, identifier)
        except ValueError as exc:
            self.stats.dropped_undecodable += 1
            if self.stats.dropped_undecodable <= _LOGGED_BAD_TRACES:
                log.warning("relay: skipped a trace that is not a TraceWrapper: %s", exc)
            return None
        if item is None:
            self.stats.empty += 1
            if self.stats.empty == 1:
                log.info("relay: skipped an empty trace (nothing in it); more are only counted")
        return item

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()


def _refusal_hint(exc: TapRefusedError) -> str:
    if exc.already_attached:
        return (
            "another /tap stream is already attached to this Envoy (only one is allowed): "
            "stop the other relay or admin client first"
        )
    return f"Envoy refused the tap configuration: {exc.message}"
