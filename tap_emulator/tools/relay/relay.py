"""The relay itself: runs the reader (Envoy -> queue) and the sender (queue -> emulator)
together; stops reading on a signal, at `--max-traces` or when Envoy is refused; forwards
what was read within `--drain-timeout-seconds`; then reports, the reason it stopped first
and its totals last."""

from __future__ import annotations

import asyncio
import logging

from tap_emulator.config import format_size
from tap_emulator.tools.relay.envoy import EnvoyReader, EnvoyRefusedError
from tap_emulator.tools.relay.queue import TraceQueue
from tap_emulator.tools.relay.sender import Sender
from tap_emulator.tools.relay.settings import RelaySettings
from tap_emulator.tools.relay.stats import RelayStats

log = logging.getLogger("tap_emulator.relay")

EXIT_OK = 0
EXIT_FAILED = 1


class Relay:
    """Reader and sender, run together; `stop` ends the reading, never the sending."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.stats = RelayStats()
        self.queue = TraceQueue(settings.queue_max_items, settings.queue_max_bytes)
        self._stopping = asyncio.Event()
        self._reading_done = asyncio.Event()
        self._reader: asyncio.Task[str] | None = None
        self._failed = False

    @property
    def unsent(self) -> int:
        """Traces read from Envoy and not (yet) written to the emulator."""
        return len(self.queue)

    def stop(self, reason: str) -> None:
        """Stop reading from Envoy; what was read is still forwarded."""
        if self._stopping.is_set():
            return
        log.info("relay stopping (%s): forwarding %d queued traces", reason, len(self.queue))
        self._stopping.set()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()

    async def run(self) -> int:
        """Relay until stopped; the exit status (0 when everything read was confirmed)."""
        settings = self.settings
        log.info(
            "relay starting envoy_admin=%s config_id=%s mode=%s tap_id=%s to=%s "
            "queue_max_items=%d queue_max_bytes=%d max_trace_bytes=%s",
            settings.admin,
            settings.config_id,
            settings.mode,
            settings.tap_id,
            settings.to,
            settings.queue_max_items,
            settings.queue_max_bytes,
            format_size(settings.max_trace_bytes),
        )
        reader = EnvoyReader(settings, self.queue, self.stats, self._stopping)
        sender = Sender(settings, self.queue, self.stats, self._reading_done)
        self._reader = asyncio.create_task(reader.run())
        sending = asyncio.create_task(sender.run())
        await self._read()
        self._reading_done.set()
        await self._drain(sending)
        queue = self.queue
        log.info("%s", self.stats.totals_line(self.unsent, queue.full_waits, queue.full_seconds))
        return EXIT_FAILED if self._failed else EXIT_OK

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            reason = await self._reader
        except asyncio.CancelledError:
            return  # stop() cancelled it, and said why
        except EnvoyRefusedError as exc:
            log.error("relay: %s", exc)
            self._failed, reason = True, "Envoy refused"
        except Exception:
            log.exception("relay: reading from Envoy failed unexpectedly")
            self._failed, reason = True, "a failure reading from Envoy"
        self.stop(reason)

    async def _drain(self, sending: asyncio.Task[None]) -> None:
        try:
            async with asyncio.timeout(self.settings.drain_timeout_seconds):
                await sending
        except TimeoutError:
            log.error(
                "relay: could not forward everything within %.0fs; %d traces read from Envoy "
                "were not sent",
                self.settings.drain_timeout_seconds,
                self.unsent,
            )
            self._failed = True
        except Exception:
            log.exception("relay: sending to the emulator failed unexpectedly")
            self._failed = True
