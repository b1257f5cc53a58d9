"""Forward, queue: the traces waiting for the tool, bounded in traces and bytes, one lane per
sender.

Each sender (node and tap id) has a lane: its traces in the order they were accepted, sent on
a stream of its own. The bound is shared by every lane. When a trace does not fit, the policy
says which gives way: `drop_oldest` evicts the trace queued longest, whichever lane holds it;
`drop_newest` refuses the new one. Either way `put` never waits and costs O(1) (amortized), so
the sources are never held back for the tool. A trace larger than the whole byte bound is
admitted alone into an empty queue (`drop_oldest` empties it first) rather than never.
"""

from __future__ import annotations

import asyncio
from collections import deque

from tap_emulator.forward.policy import WhenFull

# Taken traces leave holes in the arrival order (kept for drop_oldest) while an older trace
# waits in a stalled lane; past this many, and more holes than traces, the order is rebuilt.
_COMPACT_AFTER_HOLES = 4096


class _Entry:
    __slots__ = ("lane", "payload", "queued", "trace_id")

    def __init__(self, lane: Lane, trace_id: int, payload: bytes) -> None:
        self.lane = lane
        self.trace_id = trace_id
        self.payload = payload
        self.queued = True


class Lane:
    """One sender's queued traces, oldest first, and the wake-up of the task that sends them."""

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self.entries)

    def wake(self) -> None:
        self._ready.set()

    async def wait(self, timeout_seconds: float) -> bool:
        """Until the lane holds a trace or is woken (True), or `timeout_seconds` pass (False)."""
        if self.entries:
            return True
        self._ready.clear()
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._ready.wait()
        except TimeoutError:
            return bool(self.entries)
        return True


class ForwardQueue:
    """Every lane's traces, bounded together by `max_items` traces and `max_bytes` bytes."""

    def __init__(self, max_items: int, max_bytes: int, when_full: WhenFull) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.items = 0
        self.size_bytes = 0
        self._order: deque[_Entry] = deque()  # arrival order, for drop_oldest only
        self._holes = 0

    def _has_room(self, size_bytes: int) -> bool:
        if self.items == 0:
            return True
        return self.items < self.max_items and self.size_bytes + size_bytes <= self.max_bytes

    def put(self, lane: Lane, trace_id: int, payload: bytes) -> int:
        """Queue one trace on `lane`; returns how many traces gave way for it (the new one,
        under drop_newest; the oldest ones, under drop_oldest)."""
        size = len(payload)
        evicted = 0
        if not self._has_room(size):
            if self.when_full is WhenFull.DROP_NEWEST:
                return 1
            while not self._has_room(size):
                self._evict_oldest()
                evicted += 1
        entry = _Entry(lane, trace_id, payload)
        lane.entries.append(entry)
        if self.when_full is WhenFull.DROP_OLDEST:
            self._order.append(entry)
        self.items += 1
        self.size_bytes += size
        lane.wake()
        return evicted

    def _evict_oldest(self) -> None:
        order = self._order
        while not order[0].queued:
            order.popleft()
            self._holes -= 1
        victim = order.popleft()
        # A lane's traces are in arrival order and leave it only from its head, so the oldest
        # queued trace of all is at the head of its own lane.
        head = victim.lane.entries.popleft()
        assert head is victim
        self._remove(victim)

    def _remove(self, entry: _Entry) -> None:
        entry.queued = False
        self.items -= 1
        self.size_bytes -= len(entry.payload)
        entry.payload = b""  # a hole left in the arrival order holds no trace

    def take(self, lane: Lane) -> tuple[int, bytes] | None:
        """The oldest trace of `lane` (trace id, payload), now out of the queue; None if the
        lane is empty."""
        if not lane.entries:
            return None
        entry = lane.entries.popleft()
        taken = entry.trace_id, entry.payload
        self._remove(entry)
        if self.when_full is WhenFull.DROP_OLDEST:
            self._leave_hole()
        return taken

    def clear(self, lane: Lane) -> int:
        """Drop everything `lane` holds; returns how many traces that was."""
        dropped = len(lane.entries)
        while lane.entries:
            self._remove(lane.entries.popleft())
            if self.when_full is WhenFull.DROP_OLDEST:
                self._leave_hole()
        return dropped

    def _leave_hole(self) -> None:
        order = self._order
        self._holes += 1
        while order and not order[0].queued:
            order.popleft()
            self._holes -= 1
        if self._holes > _COMPACT_AFTER_HOLES and self._holes * 2 > len(order):
            self._order = deque(entry for entry in order if entry.queued)
            self._holes = 0
