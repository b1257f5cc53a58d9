"""Write: what the writers need from an output directory, as a small protocol.

`DirectoryPublisher` (write/directory.py) is the real one, a directory of the file system;
tests and benchmarks put their own in its place to inject faults or delays
(tap_emulator/testing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

# A temporary is written in microseconds; one this old was left by a process that died.
STALE_TEMPORARY_SECONDS = 600.0

NextFree = Callable[[str, int], int]
"""(stem, taken sequence) -> the next number to try; called after a link met EEXIST."""


class OutputDirError(Exception):
    """The output directory cannot be used; raised at start with the path and a remedy."""


@dataclass(frozen=True, slots=True)
class OurFile:
    """One of our published files found in the directory."""

    name: str
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class SweepResult:
    removed: int
    skipped: int  # named like our temporaries but not ours to remove (directory, other user)


class Publisher(Protocol):
    """What the writers need from an output directory."""

    @property
    def method(self) -> str:
        """How files are written before they are linked: `o_tmpfile` or `named_temporary`."""
        ...

    @property
    def memory_backed(self) -> bool:
        """Whether the directory lives in memory (tmpfs): no call can wait for a device."""
        ...

    def open(self) -> None: ...

    def sweep(self, older_than_seconds: float = STALE_TEMPORARY_SECONDS) -> SweepResult: ...

    def probe(self) -> str | None:
        """None if a new file can be created now, else why not."""
        ...

    def publish(self, stem: str, sequence: int, payload: bytes, next_free: NextFree) -> int:
        """Publish one file; returns the sequence it got (moved on by `next_free` past
        names already taken)."""
        ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> bool:
        """Remove one of our files; False if it was already gone; raises OSError otherwise."""
        ...

    def scan(self) -> Iterator[OurFile]:
        """Our regular files in the directory (by name, owned by us), in directory order."""
        ...

    def fsync_directory(self) -> None: ...

    def close(self) -> None: ...
