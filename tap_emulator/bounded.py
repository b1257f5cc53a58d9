"""Shared: a map bounded by entries and idle time, with its forgetting counted by reason.

Derive keeps streamed-transaction names and sequence counters in it; write keeps the numbers it
had to move past files already on disk. Neither waits for an end of trace that Envoy never
marks: every entry is forgotten after `idle_seconds` without use, or sooner when `max_entries`
is reached (least recently used first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]


@dataclass(slots=True)
class Evictions:
    """How many entries a bounded map forgot, by reason."""

    capacity: int = 0
    idle: int = 0

    @property
    def total(self) -> int:
        return self.capacity + self.idle


class BoundedLru(Generic[K, V]):
    """A map bounded by entries and idle time; touching an entry refreshes it."""

    def __init__(
        self,
        max_entries: int,
        idle_seconds: float,
        clock: Clock = time.monotonic,
        on_evict: Callable[[K], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._max_entries = max_entries
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._on_evict = on_evict
        # Idle entries are swept from the oldest end at most this often (an entry found idle
        # on access is forgotten at once): the sweep is amortised, not paid per access.
        self._sweep_every = min(1.0, idle_seconds / 8)
        self._next_sweep = clock() + self._sweep_every
        self.evictions = Evictions()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if entry[1] <= now - self._idle_seconds:
            del self._entries[key]
            self.evictions.idle += 1
            self._notify(key)
            return None
        self._entries[key] = (entry[0], now)
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            self._expire(now)
            self._next_sweep = now + self._sweep_every
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            evicted, _ = self._entries.popitem(last=False)
            self.evictions.capacity += 1
            self._notify(evicted)

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[0]

    def expire(self) -> None:
        """Forget idle entries now (they are also forgotten lazily on every access)."""
        self._expire(self._clock())

    def _expire(self, now: float) -> None:
        deadline = now - self._idle_seconds
        entries = self._entries
        while entries:
            key, (_, touched) = next(iter(entries.items()))
            if touched > deadline:
                return
            del entries[key]
            self.evictions.idle += 1
            self._notify(key)

    def _notify(self, key: K) -> None:
        if self._on_evict is not None:
            self._on_evict(key)
