"""`tap-emulator browse DIR`: the page over capture directories, offline (after `kubectl cp`),
read by the capture reader in a thread of its own while the page is already up.

The reader hands its records over in batches; the index keeps the `--max-transactions`
newest by time (directory order is no time order), so the table fills as the directory is
read and ends with the newest. Nothing is written; Ctrl-C stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tap_emulator.captures.model import Transaction
from tap_emulator.captures.protowire import ProtoDescriptors
from tap_emulator.captures.reader import ReadReport, read_transactions
from tap_emulator.netaddr import split_address
from tap_emulator.web.browse_command import DEFAULT_MAX_TRANSACTIONS, EXIT_USAGE
from tap_emulator.web.events import EventHub
from tap_emulator.web.index import Keep, TransactionIndex
from tap_emulator.web.server import PageServer

_BATCH_SECONDS = 0.25
_BATCH_RECORDS = 2_000


class DirectoryReading:
    """Reads `paths` in a thread; records reach the index on the event loop, in batches."""

    def __init__(
        self, paths: Sequence[Path], index: TransactionIndex, hub: EventHub, title: str
    ) -> None:
        self.paths = list(paths)
        self.index = index
        self.hub = hub
        self.title = title
        self.report = ReadReport()
        self.transactions = 0
        self.done = False
        self.started = time.monotonic()
        self.finished: float | None = None
        self._stop = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> threading.Thread:
        thread = threading.Thread(target=self._read, args=(loop,), name="browse-reader")
        thread.daemon = True
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        batch: list[Transaction] = []
        sent = time.monotonic()
        try:
            for transaction in read_transactions(self.paths, self.report):
                if self._stop.is_set():
                    return
                batch.append(transaction)
                now = time.monotonic()
                if len(batch) >= _BATCH_RECORDS or now - sent >= _BATCH_SECONDS:
                    loop.call_soon_threadsafe(self._take, batch)
                    batch, sent = [], now
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
                loop.call_soon_threadsafe(self._end, batch)

    def _take(self, batch: list[Transaction]) -> None:
        self.transactions += len(batch)
        change = self.index.update(batch)
        if change:
            self.hub.stage(change)

    def _end(self, batch: list[Transaction]) -> None:
        self._take(batch)
        self.done = True
        self.finished = time.monotonic()

    def status(self) -> dict[str, Any]:
        until = self.finished if self.finished is not None else time.monotonic()
        return {
            "mode": "browse",
            "ready": True,
            "problem": None,
            "reading": {
                "done": self.done,
                "seconds": round(until - self.started, 1),
                "files": self.report.files,
                "transactions": self.transactions,
                "unreadableFiles": self.report.unreadable_files,
                "unreadable": self.report.unreadable[:5],
                "twinsSkipped": self.report.twins_skipped,
            },
            "index": {
                "held": len(self.index),
                "max": self.index.max_transactions,
                "forgotten": self.index.forgotten,
                "pending": 0,
                "skipped": 0,
                "behindSeconds": 0.0,
                "lagging": False,
            },
        }


class BrowsePage:
    """The page and the directory's reading, started and stopped together."""

    def __init__(
        self,
        paths: Sequence[Path],
        max_transactions: int = DEFAULT_MAX_TRANSACTIONS,
        descriptors: ProtoDescriptors | None = None,
    ) -> None:
        self.shown_paths = " ".join(str(path) for path in paths)
        title = f"browse {self.shown_paths}"
        self.index = TransactionIndex(max_transactions, Keep.NEWEST)
        self.hub = EventHub(lambda: self.index.version, lambda: self.reading.status())
        self.reading = DirectoryReading(paths, self.index, self.hub, title)
        self.server = PageServer(
            self.index,
            self.hub,
            self.reading.status,
            mode="browse",
            title=title,
            descriptors=descriptors,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, host: str, port: int) -> tuple[str, int]:
        address = await self.server.start(host, port)
        self._tasks = [
            asyncio.create_task(self.hub.run_changes(), name="web-changes"),
            asyncio.create_task(self.hub.run_status(), name="web-status"),
        ]
        self.reading.start(asyncio.get_running_loop())
        return address

    async def close(self) -> None:
        self.reading.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.close()


async def serve_directory(
    paths: Sequence[Path],
    listen: str,
    max_transactions: int,
    descriptors: ProtoDescriptors | None,
    stop: asyncio.Event | None = None,
) -> int:
    page = BrowsePage(paths, max_transactions, descriptors)
    host, port = split_address(listen)
    try:
        bound = await page.start(host, port)
    except OSError as exc:
        print(f"tap-emulator browse: cannot listen on {listen}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(
        f"tap-emulator browse: reading {page.shown_paths}; open http://{shown}:{bound[1]}/ "
        "(Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await page.close()
    return 0
