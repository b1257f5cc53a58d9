"""Write: caps on the output directory, applied oldest first, so a long run never fills it.

Only files whose names the emulator writes (`<stem>-<n>.pb`) are counted or deleted; other
files in a shared directory such as /tmp are never touched. The ledger is built by one scan
at start (oldest first by modification time) and then kept up to date by the writers, which
call `admit` after publishing and delete whatever it returns. It is shared by the writer
threads, hence the lock.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from dataclasses import dataclass

OUR_FILE = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9._:-]*-[0-9]+\.pb")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """0 means no cap."""

    max_bytes: int = 0
    max_files: int = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.max_files > 0


class RetentionLedger:
    """Our files in publication order, with their total size."""

    def __init__(self, policy: RetentionPolicy) -> None:
        self.policy = policy
        self._files: deque[tuple[str, int]] = deque()
        self.total_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._files)

    def scan(self, dir_fd: int) -> None:
        """Learn the files already in the directory, oldest first."""
        found: list[tuple[int, str, int]] = []
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if OUR_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    found.append((stat.st_mtime_ns, entry.name, stat.st_size))
        found.sort()
        with self._lock:
            for _, name, size in found:
                self._files.append((name, size))
                self.total_bytes += size

    def admit(self, name: str, size: int) -> list[str]:
        """Record a published file; returns the oldest files to delete to honour the caps."""
        with self._lock:
            self._files.append((name, size))
            self.total_bytes += size
            return self._over_cap()

    def over_cap(self) -> list[str]:
        with self._lock:
            return self._over_cap()

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
        return doomed
