"""Derive, bounded state: names of in-flight streamed traces and per-stem sequence counters.

Envoy never marks the end of a streamed transaction, so nothing here waits for one: every
entry is forgotten after `idle_seconds` without use, or sooner when `max_entries` is reached
(least recently used first). Each forgetting is counted by reason.
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


class StemSketch:
    """Which stems may already have files on disk, in constant memory.

    A Bloom filter with two hash positions over a fixed bit array: "no" is certain, "maybe"
    sends the caller to the disk. It starts from one scan of the output directory and learns
    every stem used since, so the common case (a trace id never seen before) costs no
    system call; as it fills over a very long run, more answers become "maybe" and cost one
    lookup on disk each, which is still correct.
    """

    def __init__(self, size_bits: int = 1 << 23) -> None:
        if size_bits & (size_bits - 1):
            raise ValueError("size_bits must be a power of two")
        self._bits = bytearray(size_bits // 8)
        self._mask = size_bits - 1

    def _positions(self, stem: str) -> tuple[int, int]:
        digest = hash(stem)
        return digest & self._mask, (digest >> 32) & self._mask

    def add(self, stem: str) -> None:
        for position in self._positions(stem):
            self._bits[position >> 3] |= 1 << (position & 7)

    def might_contain(self, stem: str) -> bool:
        return all(self._bits[p >> 3] & (1 << (p & 7)) for p in self._positions(stem))


class SequenceCounter:
    """Hands out 1, 2, 3... per stem, continuing after what is already on disk.

    `floor(stem)` reports the highest sequence already published for a stem; it is asked
    only when a stem is not (or no longer) tracked, so a restart or an eviction never
    reuses a number whose file exists. With a `sketch` of the stems that may have files,
    it is not asked for stems that certainly have none.
    """

    def __init__(
        self,
        floor: Callable[[str], int],
        max_entries: int,
        idle_seconds: float,
        clock: Clock = time.monotonic,
        sketch: StemSketch | None = None,
    ) -> None:
        self._floor = floor
        self._sketch = sketch
        self._last: BoundedLru[str, int] = BoundedLru(max_entries, idle_seconds, clock)

    @property
    def evictions(self) -> Evictions:
        return self._last.evictions

    def __len__(self) -> int:
        return len(self._last)

    def next(self, stem: str) -> int:
        last = self._last.get(stem)
        if last is None:
            sketch = self._sketch
            if sketch is None or sketch.might_contain(stem):
                last = self._floor(stem)
            else:
                last = 0
                sketch.add(stem)
        self._last.put(stem, last + 1)
        return last + 1


@dataclass(frozen=True, slots=True)
class TraceName:
    """What a streamed transaction is called: learned from its request headers."""

    prefix: str
    trace_id: str


SegmentKey = tuple[int, int]
"""(stream number, Envoy trace id): trace ids are unique only within one proxy."""


class SegmentNames:
    """Remembers each streamed transaction's name until it goes idle or its stream ends."""

    def __init__(self, max_entries: int, idle_seconds: float, clock: Clock = time.monotonic):
        self._by_stream: dict[int, set[int]] = {}
        self._names: BoundedLru[SegmentKey, TraceName] = BoundedLru(
            max_entries, idle_seconds, clock, on_evict=self._unindex
        )

    @property
    def evictions(self) -> Evictions:
        return self._names.evictions

    def __len__(self) -> int:
        return len(self._names)

    def get(self, stream: int, trace_id: int) -> TraceName | None:
        return self._names.get((stream, trace_id))

    def remember(self, stream: int, trace_id: int, name: TraceName) -> None:
        # put() may first forget an idle entry for this very key; index after it, not before.
        self._names.put((stream, trace_id), name)
        self._by_stream.setdefault(stream, set()).add(trace_id)

    def forget_stream(self, stream: int) -> None:
        """Drop every name a finished stream taught us (not counted as an eviction)."""
        for trace_id in self._by_stream.pop(stream, ()):
            self._names.pop((stream, trace_id))

    def _unindex(self, key: SegmentKey) -> None:
        stream, trace_id = key
        traces = self._by_stream.get(stream)
        if traces is not None:
            traces.discard(trace_id)
            if not traces:
                del self._by_stream[stream]
