"""Derive, bounded state: names of in-flight streamed traces and per-stem sequence counters.

Envoy never marks the end of a streamed transaction, so nothing here waits for one: every
entry is forgotten after `idle_seconds` without use, or sooner when `max_entries` is reached
(least recently used first). Each forgetting is counted by reason.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from tap_emulator.bounded import BoundedLru, Clock, Evictions


class SequenceCounter:
    """Hands out 1, 2, 3... per stem, from memory alone.

    The writers move these numbers past files already on disk (write/numbering.py), so a
    restart or a forgotten stem never reuses a number whose file exists, and nothing here
    touches the disk."""

    def __init__(
        self, max_entries: int, idle_seconds: float, clock: Clock = time.monotonic
    ) -> None:
        self._last: BoundedLru[str, int] = BoundedLru(max_entries, idle_seconds, clock)

    @property
    def evictions(self) -> Evictions:
        return self._last.evictions

    def __len__(self) -> int:
        return len(self._last)

    def next(self, stem: str) -> int:
        following = (self._last.get(stem) or 0) + 1
        self._last.put(stem, following)
        return following


@dataclass(frozen=True, slots=True)
class TraceName:
    """What a streamed transaction is called: learned from its request headers."""

    prefix: str
    trace_id: str


SegmentKey = tuple[int, int]
"""(stream number, Envoy trace id): trace ids are unique only within one proxy."""


class SegmentNames:
    """Remembers each streamed transaction's name until it goes idle or its stream ends.

    When the table is full, a stream that holds more than its fair share (the bound divided by
    the streams that hold entries) makes room by forgetting its own oldest entry, not another
    stream's: one proxy's churn never renames the files of another's transactions."""

    def __init__(self, max_entries: int, idle_seconds: float, clock: Clock = time.monotonic):
        self._max_entries = max_entries
        self._by_stream: dict[int, OrderedDict[int, None]] = {}
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
        own = self._by_stream.get(stream)
        if (
            own
            and trace_id not in own
            and len(self._names) >= self._max_entries
            and len(own) * len(self._by_stream) >= self._max_entries
        ):
            oldest = next(iter(own))
            del own[oldest]
            self._names.pop((stream, oldest))
            self._names.evictions.capacity += 1
        # put() may first forget an idle entry for this very key; index after it, not before.
        self._names.put((stream, trace_id), name)
        traces = self._by_stream.setdefault(stream, OrderedDict())
        traces[trace_id] = None
        traces.move_to_end(trace_id)

    def forget_stream(self, stream: int) -> None:
        """Drop every name a finished stream taught us (not counted as an eviction)."""
        for trace_id in self._by_stream.pop(stream, ()):
            self._names.pop((stream, trace_id))

    def _unindex(self, key: SegmentKey) -> None:
        stream, trace_id = key
        traces = self._by_stream.get(stream)
        if traces is not None:
            traces.pop(trace_id, None)
            if not traces:
                del self._by_stream[stream]
