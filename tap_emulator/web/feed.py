"""The page's feed: the files the emulator published and the page has not yet read, bounded,
and the indexer that reads them into the index in time slices, between which the page's
HTTP side is served. Runs in the page's own process (`tap_emulator.web.child`).

The feed holds at most `max_items` files and `max_bytes` of their payloads; past either
bound the oldest waiting file is skipped and counted: the page falls behind and says so.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tap_emulator.captures.assemble import Assembler
from tap_emulator.captures.formats import TraceFileError
from tap_emulator.captures.model import Transaction
from tap_emulator.layout import file_name
from tap_emulator.web.index import Change, TransactionIndex

DEFAULT_MAX_PENDING_BYTES = 16 * 1024 * 1024
# The indexer yields to the page's HTTP side at least this often.
SLICE_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class _Waiting:
    stem: str
    sequence: int
    payload: bytes
    published_at: float  # epoch seconds


class PublicationFeed:
    """Files published and not yet indexed, bounded by count and bytes, oldest skipped."""

    def __init__(self, max_items: int, max_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._waiting: deque[_Waiting] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self.offered = 0
        self.skipped = 0  # files never indexed: the hand-off was full

    def offer(self, stem: str, sequence: int, payload: bytes, published_at: float) -> None:
        """One published file (constant time)."""
        self.offered += 1
        if len(payload) > self.max_bytes:
            self.skipped += 1
            return
        waiting = self._waiting
        waiting.append(_Waiting(stem, sequence, payload, published_at))
        self._bytes += len(payload)
        while len(waiting) > self.max_items or self._bytes > self.max_bytes:
            self._bytes -= len(waiting.popleft().payload)
            self.skipped += 1
        if not self._wake.is_set():
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def oldest_age_seconds(self, now: float | None = None) -> float:
        if not self._waiting:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self._waiting[0].published_at)

    def take(self) -> _Waiting | None:
        if not self._waiting:
            return None
        item = self._waiting.popleft()
        self._bytes -= len(item.payload)
        return item

    async def wait(self) -> None:
        while not self._waiting:
            self._wake.clear()
            await self._wake.wait()


class Indexer:
    """Reads what the feed holds into the index, slice by slice; hands each slice's changes
    to `on_change` (the event stream)."""

    def __init__(
        self,
        feed: PublicationFeed,
        index: TransactionIndex,
        directory: Path,
        on_change: Callable[[Change], None],
    ) -> None:
        self.feed = feed
        self.index = index
        self.directory = directory
        self.on_change = on_change
        bound = index.max_transactions
        self.assembler = Assembler(max_open=bound, max_open_pieces=20 * bound, report_open=True)
        self.indexed = 0
        self.unreadable = 0

    async def run(self) -> None:
        while True:
            await self.feed.wait()
            self.index_slice(time.perf_counter() + SLICE_SECONDS)
            await asyncio.sleep(0)  # the page's requests and event stream, between slices

    def index_slice(self, deadline: float) -> None:
        """Index waiting files until `deadline` (perf_counter) or none is left."""
        records: list[Transaction] = []
        feed, assembler, directory = self.feed, self.assembler, self.directory
        while True:
            item = feed.take()
            if item is None:
                break
            path = str(directory / file_name(item.stem, item.sequence))
            try:
                records.extend(assembler.feed(path, item.payload, mtime=item.published_at))
            except TraceFileError:
                self.unreadable += 1  # not ours to judge here: `show` will say why
            self.indexed += 1
            if time.perf_counter() >= deadline:
                break
        if records:
            change = self.index.update(records)
            if change:
                self.on_change(change)
