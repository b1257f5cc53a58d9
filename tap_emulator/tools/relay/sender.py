"""The relay's emulator side: takes traces off the queue and writes them on a StreamTaps
call, opening a new call after a failure (with backoff), when Envoy's node changes, and
after the emulator drains; each call is half-closed and its answer awaited, so a trace
is `confirmed` only once the emulator said OK."""

from __future__ import annotations

import asyncio
import logging

from tap_emulator.tools.relay.backoff import Backoff
from tap_emulator.tools.relay.queue import Item, TraceQueue
from tap_emulator.tools.relay.settings import RelaySettings
from tap_emulator.tools.relay.stats import RelayStats
from tap_emulator.tools.relay.upstream import Upstream

log = logging.getLogger("tap_emulator.relay")

_POLL_SECONDS = 0.1


class Sender:
    """Forwards the queue until `reading_done` is set and the queue is empty."""

    def __init__(
        self,
        settings: RelaySettings,
        queue: TraceQueue,
        stats: RelayStats,
        reading_done: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.stats = stats
        self._reading_done = reading_done
        self._backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)

    def _finished(self) -> bool:
        return self._reading_done.is_set() and not len(self.queue)

    async def _next_item(self, upstream: Upstream | None) -> Item | None:
        """The next item; None once there will be none, or while a draining emulator's
        call waits to be closed."""
        while True:
            item = await self.queue.get(_POLL_SECONDS)
            if item is not None:
                return item
            if self._finished():
                return None
            if upstream is not None and upstream.draining.is_set():
                return None

    async def run(self) -> None:
        upstream: Upstream | None = None
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
                    if self._finished():
                        break
                    continue
                if upstream is None:
                    upstream = await self._connect(pending.identifier)
                delay = await self._write(upstream, pending)
                if delay is not None:
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

    async def _write(self, upstream: Upstream, item: Item) -> float | None:
        """Write `item`. If the call failed, it is closed, its traces are unconfirmed, and
        the answer is how long to wait before the next one."""
        try:
            await upstream.write(item)
        except Exception as exc:
            outcome = await upstream.failure(exc)
            self.stats.unconfirmed += upstream.written
            delay = self._backoff.next()
            log.warning(
                "relay: stream to %s failed: %s %s; %d traces written on it may not all have "
                "been accepted; reconnecting in %.1fs",
                self.settings.to,
                outcome.code,
                outcome.details,
                upstream.written,
                delay,
            )
            return delay
        return None

    async def _connect(self, identifier: bytes) -> Upstream:
        while True:
            upstream = Upstream(self.settings.to, identifier)
            try:
                await upstream.open()
            except ConnectionError as exc:
                await upstream.close()
                delay = self._backoff.next()
                log.warning(
                    "relay: emulator at %s unavailable (%s); retrying in %.1fs",
                    self.settings.to,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()
            self.stats.streams += 1
            log.info("relay streaming to=%s stream=%d", self.settings.to, self.stats.streams)
            return upstream

    async def _finish(self, upstream: Upstream, why: str) -> None:
        written = upstream.written
        log.info("relay: closing stream (%s): waiting for the emulator's answer", why)
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
