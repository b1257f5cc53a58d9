"""The live page, as its process runs it: the feed of published files, the indexer, the event
stream and the HTTP side, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path

from tap_emulator.web.events import EventHub
from tap_emulator.web.feed import Indexer, PublicationFeed
from tap_emulator.web.index import Keep, TransactionIndex
from tap_emulator.web.server import PageServer
from tap_emulator.web.status import LiveStatus


class LivePage:
    """What `ui_listen` serves: the last `max_transactions` transactions published."""

    def __init__(
        self,
        output_dir: Path,
        max_transactions: int,
        on_pages: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.feed = PublicationFeed(max_items=max_transactions)
        self.index = TransactionIndex(max_transactions, Keep.ARRIVAL)
        self.hub = EventHub(
            lambda: self.index.version, lambda: self.status.read(), on_pages=on_pages
        )
        self.indexer = Indexer(self.feed, self.index, output_dir, self.hub.stage)
        self.status = LiveStatus(self.indexer, self.hub.state)
        self.server = PageServer(
            self.index,
            self.hub,
            self.status.read,
            mode="live",
            title=f"tap-emulator on {socket.gethostname()}: {output_dir}",
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, host: str, port: int) -> tuple[str, int]:
        address = await self.server.start(host, port)
        self._tasks = [
            asyncio.create_task(self.indexer.run(), name="web-indexer"),
            asyncio.create_task(self.hub.run_changes(), name="web-changes"),
            asyncio.create_task(self.hub.run_status(), name="web-status"),
        ]
        return address

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.server.close()
