"""Write: caps on the output directory, applied oldest first, so a long run never fills it.

Only files whose names the emulator writes (`<stem>-<n>.pb`, owned by the emulator's user) are
counted or deleted; other files in a shared directory such as /tmp are never touched. The
ledger is built by one scan at start (oldest first by modification time) and then kept up to
date by the writers, which call `admit` after publishing and delete whatever it returns. A file
that cannot be deleted (replaced by a directory, made immutable, taken over by another user)
leaves the ledger all the same: the caps count what the emulator can still manage.

Because deletion takes a stem's lowest numbers first, the ledger also remembers, for every stem
with a file on disk, the highest number it holds: a stem's numbers keep going up while any of
its files exist, wherever the gaps are. It is shared by the writer threads, hence the lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tap_emulator import layout
from tap_emulator.write.publisher import OurFile


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """0 means no cap."""

    max_bytes: int = 0
    max_files: int = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.max_files > 0


class RetentionLedger:
    """Our files in publication order, with their total size and each stem's highest number."""

    def __init__(self, policy: RetentionPolicy) -> None:
        self.policy = policy
        self._files: deque[tuple[str, int]] = deque()
        self._stems: dict[str, list[int]] = {}  # stem -> [files on disk, highest number]
        self.total_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._files)

    def load(self, found: Iterable[OurFile]) -> None:
        """Learn the files already in the directory (from one scan), oldest first."""
        ordered = sorted(found, key=lambda f: (f.mtime_ns, f.name))
        with self._lock:
            for item in ordered:
                self._add(item.name, item.size_bytes)

    def admit(self, name: str, size_bytes: int) -> list[str]:
        """Record a published file; returns the oldest files to delete to honour the caps."""
        with self._lock:
            self._add(name, size_bytes)
            return self._over_cap()

    def over_cap(self) -> list[str]:
        with self._lock:
            return self._over_cap()

    def highest(self, stem: str) -> int:
        """The highest number of a file of `stem` still on disk (0: none)."""
        with self._lock:
            entry = self._stems.get(stem)
            return 0 if entry is None else entry[1]

    def _add(self, name: str, size_bytes: int) -> None:
        self._files.append((name, size_bytes))
        self.total_bytes += size_bytes
        parsed = layout.parse_file_name(name)
        if parsed is not None:
            stem, sequence = parsed
            entry = self._stems.setdefault(stem, [0, 0])
            entry[0] += 1
            entry[1] = max(entry[1], sequence)

    def _over_cap(self) -> list[str]:
        doomed: list[str] = []
        max_bytes, max_files = self.policy.max_bytes, self.policy.max_files
        while self._files and (
            (max_bytes and self.total_bytes > max_bytes)
            or (max_files and len(self._files) > max_files)
        ):
            name, size = self._files.popleft()
            self.total_bytes -= size
            doomed.append(name)
            parsed = layout.parse_file_name(name)
            if parsed is not None:
                entry = self._stems[parsed[0]]
                entry[0] -= 1
                if entry[0] == 0:
                    del self._stems[parsed[0]]
        return doomed
