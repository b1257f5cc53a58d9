"""The live page's feed: a bounded hand-off from the writers, and the indexer that reads what
they published in the background, in time slices paced by how busy the event loop is.

The writers pay one deque append per published file (`offer`, called on the event loop).
The hand-off holds at most `max_items` files and `max_bytes` of their payloads; past either
bound the oldest waiting file is skipped and counted: the page never holds the writers back,
it falls behind and says so.

Reading a file back into the index costs tens of microseconds of the loop's time (protobuf
decoding and the capture reader's grouping), about as much as taking it in did. So the
indexer runs in slices of at most 2 ms, and between slices it yields the loop for long
enough that its share of the loop stays below what the rest of the server leaves idle: up
to half when the server is quiet, 2% when the tap streams keep the loop busy. The share is
measured from the loop thread's own CPU time, so it follows the load as it changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tap_emulator.captures.assemble import Assembler
from tap_emulator.captures.formats import TraceFileError
from tap_emulator.captures.model import Transaction
from tap_emulator.layout import file_name
from tap_emulator.web.index import Change, TransactionIndex

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_BYTES = 16 * 1024 * 1024
SLICE_SECONDS = 0.002
# The indexer's share of the loop: at most this when the server is quiet...
MAX_SHARE = 0.5
# ...and at least this, when the tap streams keep the loop busy; in between it takes what
# the rest of the server leaves idle, with this much left over.
MIN_SHARE = 0.02
_HEADROOM = 0.1
# How often the share is worked out again from the loop thread's CPU time.
_PACE_WINDOW_SECONDS = 0.25


class Published(Protocol):
    """What the writers tell of a file they published (`write.queue.Publication`)."""

    stem: str
    sequence: int
    payload: bytes


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

    def offer(self, publication: Published) -> None:
        """One published file (on the event loop, from the writers: constant time)."""
        payload = publication.payload
        self.offered += 1
        if len(payload) > self.max_bytes:
            self.skipped += 1
            return
        waiting = self._waiting
        waiting.append(_Waiting(publication.stem, publication.sequence, payload, time.time()))
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


class LoopPace:
    """How long the indexer yields the loop after a slice, from the loop thread's CPU time.

    `busy` is the share of wall time the rest of the server kept the loop thread on a CPU
    over the last window (the indexer's own slices left out); the indexer's share is then
    what is left idle less a margin, between MIN_SHARE and MAX_SHARE."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._window_wall = clock()
        self._window_cpu = cpu_clock()
        self._window_own = 0.0
        self.share = MAX_SHARE
        self.busy = 0.0

    def pause_after(self, slice_seconds: float) -> float:
        self._window_own += slice_seconds
        now = self._clock()
        wall = now - self._window_wall
        if wall >= _PACE_WINDOW_SECONDS:
            cpu = self._cpu_clock()
            others = max(0.0, cpu - self._window_cpu - self._window_own)
            self.busy = min(1.0, others / wall)
            self.share = min(MAX_SHARE, max(MIN_SHARE, 1.0 - _HEADROOM - self.busy))
            self._window_wall, self._window_cpu, self._window_own = now, cpu, 0.0
        return slice_seconds * (1.0 - self.share) / self.share


class Indexer:
    """Reads what the feed holds into the index, slice by slice; hands each slice's changes
    to `on_change` (the event stream)."""

    def __init__(
        self,
        feed: PublicationFeed,
        index: TransactionIndex,
        directory: Path,
        on_change: Callable[[Change], None],
        pace: LoopPace | None = None,
    ) -> None:
        self.feed = feed
        self.index = index
        self.directory = directory
        self.on_change = on_change
        self.pace = pace or LoopPace()
        bound = index.max_transactions
        self.assembler = Assembler(max_open=bound, max_open_pieces=20 * bound, report_open=True)
        self.indexed = 0
        self.unreadable = 0

    async def run(self) -> None:
        while True:
            await self.feed.wait()
            started = time.perf_counter()
            self.index_slice(started + SLICE_SECONDS)
            await asyncio.sleep(self.pace.pause_after(time.perf_counter() - started))

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
