"""Write: the bounded queue between the streams and the writers.

Bounded in files and in bytes, counting files from the moment they are queued until they are
published or dropped. A message's files go in together, as one group: once `put` is called the
queue owns every file of the group, even if the caller is cancelled while it waits for room (a
stream ended by a drain, or by its sender, never leaves half of an accepted message behind).

When full, `put` waits, in arrival order: the stream handler stops reading, HTTP/2 flow control
pushes back on the sender, and memory stays bounded. `try_put` never waits; sources that must
never hold their sender back use it and drop what does not fit. A group larger than the whole
queue is admitted alone, when the queue is empty, rather than never.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class Publication:
    """One file to publish as `<stem>-<sequence>.pb`, or under the next free number.

    `settled(published)` is called once, on the event loop, when the file is on disk (True)
    or was given up (False)."""

    stem: str
    sequence: int
    payload: bytes
    arrived: float = field(default_factory=time.monotonic)
    settled: Callable[[bool], None] | None = None


@dataclass(slots=True)
class _Waiter:
    group: Sequence[Publication]
    size_bytes: int
    admitted: asyncio.Future[None]


class WriteQueue:
    """FIFO of publications, bounded by `max_items` files and `max_bytes` bytes."""

    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._on_wait = on_wait
        self._pending: deque[Publication] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._waiting_items = 0
        self.items = 0  # queued or being written
        self.size_bytes = 0
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- accepting ----------------------------------------------------------------------

    def _has_room(self, items: int, size_bytes: int) -> bool:
        if self.items == 0:
            return True
        return (
            self.items + items <= self.max_items and self.size_bytes + size_bytes <= self.max_bytes
        )

    def try_put(self, group: Sequence[Publication]) -> bool:
        """Queue the whole group now if it fits and nobody waits ahead of it; else nothing."""
        size = sum(len(p.payload) for p in group)
        if self._waiters or not self._has_room(len(group), size):
            return False
        self._admit(group, size)
        return True

    async def put(self, group: Sequence[Publication]) -> None:
        """Queue the whole group, waiting in arrival order while the queue is full.

        From this call on the group belongs to the queue: cancelling the caller does not take
        it back, it is admitted as soon as there is room and counted by `unpublished`."""
        if self.try_put(group):
            return
        waiter = _Waiter(
            group,
            sum(len(p.payload) for p in group),
            asyncio.get_running_loop().create_future(),
        )
        self._waiters.append(waiter)
        self._waiting_items += len(group)
        self._idle.clear()
        started = time.monotonic()
        try:
            await asyncio.shield(waiter.admitted)
        finally:
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - started)

    def _admit(self, group: Sequence[Publication], size_bytes: int) -> None:
        self._pending.extend(group)
        self.items += len(group)
        self.size_bytes += size_bytes
        self._idle.clear()
        self._work.set()

    # --- the writers' side --------------------------------------------------------------

    def take(self, limit: int) -> list[Publication]:
        """Up to `limit` queued files, oldest first (they still count until released)."""
        pending = self._pending
        return [pending.popleft() for _ in range(min(limit, len(pending)))]

    def give_back(self, publications: Sequence[Publication]) -> None:
        """Put files taken but not published back at the head, in their order."""
        self._pending.extendleft(reversed(publications))
        if publications:
            self._work.set()

    async def wait_for_work(self) -> None:
        while not self._pending:
            self._work.clear()
            await self._work.wait()

    def release(self, publication: Publication) -> None:
        """A taken file is out (published or dropped): make room, admit whoever fits."""
        self.items -= 1
        self.size_bytes -= len(publication.payload)
        waiters = self._waiters
        while waiters and self._has_room(len(waiters[0].group), waiters[0].size_bytes):
            waiter = waiters.popleft()
            self._waiting_items -= len(waiter.group)
            self._admit(waiter.group, waiter.size_bytes)
            if not waiter.admitted.done():
                waiter.admitted.set_result(None)
        if self.items == 0 and not waiters:
            self._idle.set()

    # --- state --------------------------------------------------------------------------

    @property
    def unpublished(self) -> int:
        """Files accepted and not yet out: queued, being written, or waiting for room."""
        return self.items + self._waiting_items

    async def wait_until_empty(self, within_seconds: float) -> bool:
        """True once every accepted file is out; False if that takes longer."""
        try:
            async with asyncio.timeout(within_seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
