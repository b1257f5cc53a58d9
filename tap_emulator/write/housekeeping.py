"""Write: the output directory's housekeeping: what kind of directory it is, our files found by
one scan, and temporaries a dead process left behind swept, touching nothing that is not ours.

Only regular files owned by the emulator's user and named as ours count (layout.py); anything
else named like them (a directory, another user's file in a shared directory such as /tmp) is
left alone and counted as skipped. Temporaries of a live emulator sharing the directory are
younger than any threshold worth setting, so they are never touched.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tap_emulator import layout
from tap_emulator.write.publisher import OurFile, SweepResult

MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})


def process_umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError), Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def file_system_type(directory: Path) -> str:
    """The type of the file system holding `directory` (from /proc/self/mountinfo), or ''."""
    target = os.path.realpath(directory)
    best, best_type = "", ""
    with contextlib.suppress(OSError), Path("/proc/self/mountinfo").open() as mounts:
        for line in mounts:
            fields = line.split()
            if " - " not in line or len(fields) < 5:
                continue
            mount_point = fields[4].replace("\\040", " ")
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, best_type = mount_point, line.split(" - ", 1)[1].split()[0]
    return best_type


def scan_our_files(dir_fd: int, uid: int) -> Iterator[OurFile]:
    """Our regular files in the directory (by name, owned by `uid`), in directory order."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if layout.OUR_FILE.fullmatch(entry.name) is None:
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if entry.is_file(follow_symlinks=False) and stat.st_uid == uid:
                yield OurFile(entry.name, stat.st_size, stat.st_mtime_ns)


def sweep_temporaries(dir_fd: int, uid: int, older_than_seconds: float) -> SweepResult:
    """Remove our temporaries older than `older_than_seconds` (left by a dead process)."""
    removed = skipped = 0
    deadline_ns = time.time_ns() - int(older_than_seconds * 1e9)
    with os.scandir(dir_fd) as entries:
        candidates = [entry for entry in entries if layout.is_temporary(entry.name)]
    for entry in candidates:
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not entry.is_file(follow_symlinks=False) or stat.st_uid != uid:
            skipped += 1
            continue
        if stat.st_mtime_ns > deadline_ns:
            continue
        try:
            os.unlink(entry.name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except OSError:
            skipped += 1
            continue
        removed += 1
    return SweepResult(removed, skipped)
