"""The bounded FIFO between the relay's reader (Envoy) and its sender (the emulator).

Bounded in traces and in bytes; when full, `put` waits, so the reader stops reading from
Envoy and TCP flow control holds Envoy's writes (Envoy then keeps what it could not write,
in its own memory). One trace larger than the byte bound is admitted alone into an empty
queue, so no trace that passed `max_trace_bytes` can block the relay for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass


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
    """FIFO bounded in items and bytes; full means `put` waits (counted in `full_waits`
    and `full_seconds`)."""

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

    def is_full_for(self, item: Item) -> bool:
        """True if `put(item)` would wait now."""
        return not self._fits(item.size)

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self._bytes + size <= self.max_bytes

    async def put(self, item: Item) -> None:
        """Queue `item`, waiting while the queue is full."""
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
        """The oldest item, or None if none came within `timeout_seconds`."""
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
