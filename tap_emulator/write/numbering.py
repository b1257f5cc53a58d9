"""Write: moves each file's planned number past the files already on disk, without overwriting.

Derive numbers the files of a stem 1, 2, 3... from memory alone. Only the writers look at the
disk, so no lookup ever runs on the event loop: before a stem's first file of this run is
linked, they ask what the directory already holds for it and shift the stem's numbers past
that, keeping their order. The question costs nothing for a stem that certainly has no file
(a Bloom filter learned from one scan at start and every stem used since says so), and O(log n)
lookups otherwise: with retention on, the ledger knows each stem's highest number; without it,
files are only ever deleted by hand and a galloping search finds the end of the run from 1.
`link` failing with EEXIST stays the last guard: the file moves to the next free number.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from tap_emulator.bounded import BoundedLru
from tap_emulator.layout import file_name
from tap_emulator.write.retention import RetentionLedger


class StemBloomFilter:
    """Which stems may already have files on disk, in constant memory.

    Two hash positions over a fixed bit array: "no" is certain, "maybe" sends the caller to the
    disk. As it fills over a very long run, more answers become "maybe" and cost a lookup each,
    which is still correct."""

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


class Numbering:
    """Final numbers for planned ones, per stem; shared by the writer threads."""

    def __init__(
        self,
        exists: Callable[[str], bool],
        ledger: RetentionLedger | None,
        max_entries: int,
        idle_seconds: float,
    ) -> None:
        self._exists = exists
        self._ledger = ledger
        self._maybe_on_disk = StemBloomFilter()
        self._shifts: BoundedLru[str, int] = BoundedLru(max_entries, idle_seconds)
        self._lock = threading.Lock()
        self.collisions = 0

    def learn(self, stems: Iterable[str]) -> None:
        """Stems that have files on disk (from the scan at start)."""
        for stem in stems:
            self._maybe_on_disk.add(stem)

    def first_try(self, stem: str, planned: int) -> int:
        """The number to link a planned file under first."""
        with self._lock:
            shift = self._shifts.get(stem)
            if shift is None:
                shift = 0
                if self._maybe_on_disk.might_contain(stem):
                    shift = max(0, self.highest_on_disk(stem) + 1 - planned)
                else:
                    self._maybe_on_disk.add(stem)
                self._shifts.put(stem, shift)
            return planned + shift

    def next_free(self, stem: str, taken: int) -> int:
        """After `link` met an existing name: the number to try next (and for later files)."""
        with self._lock:
            self.collisions += 1
            following = max(taken, self.highest_on_disk(stem)) + 1
            shift = self._shifts.get(stem) or 0
            self._shifts.put(stem, shift + following - taken)
            return following

    def highest_on_disk(self, stem: str) -> int:
        """The highest number of the stem's files on disk (0: none)."""
        if self._ledger is not None:
            return self._ledger.highest(stem)
        return self._contiguous_run(stem, 1)

    def _contiguous_run(self, stem: str, start: int) -> int:
        """The highest n with `stem-start..n` all on disk: O(log n) lookups, no scan."""
        if not self._exists(file_name(stem, start)):
            return start - 1
        low, high = start, start * 2
        while self._exists(file_name(stem, high)):
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if self._exists(file_name(stem, middle)):
                low = middle
            else:
                high = middle
        return low
