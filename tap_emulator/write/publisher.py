"""Write: every system call on the output directory, behind one small protocol.

`DirectoryPublisher` writes each file completely (and fsyncs it, if asked) before the file gets
its name, then `link`s it to that name relative to a directory fd opened once at start. `link`
fails with EEXIST instead of replacing a file, and the file then takes the next free number.
The file is written as an unnamed O_TMPFILE file linked through /proc/self/fd (nothing to clean
up, nothing a crash can leave), or, where the file system or /proc does not allow that, as a
named temporary created with O_EXCL|O_NOFOLLOW under an unpredictable name (see layout.py) and
unlinked after the link. A reader therefore never sees a partial file, and since names never
hold `/`, nothing can land outside the directory.

Everything here blocks; the writer pool calls it from writer threads (or, on a memory-backed
directory only, from the event loop: see pool.py). Tests and benchmarks put their own
`Publisher` in its place to inject faults or delays.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tap_emulator import layout

log = logging.getLogger(__name__)

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_UNNAMED_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
_MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
# A temporary is written in microseconds; one this old was left by a process that died.
STALE_TEMPORARY_SECONDS = 600.0
# A name taken by someone else between our choice and our create costs a retry with a new name.
_TEMPORARY_NAME_ATTEMPTS = 8

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


def _umask() -> int:
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


class DirectoryPublisher:
    """Publishes into one directory through a directory fd; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        file_mode: int = 0o640,
        fsync: bool = False,
        unnamed_temporaries: bool = True,
    ) -> None:
        self.directory = directory
        self._file_mode = file_mode
        self._fsync = fsync
        self._allow_unnamed = unnamed_temporaries
        self._unnamed = False
        self._needs_chmod = False
        self._dir_fd: int | None = None
        self._instance = layout.new_instance_id()
        self._temporaries = 0
        self._uid = os.geteuid()
        self.memory_backed = False

    @property
    def method(self) -> str:
        return "o_tmpfile" if self._unnamed else "named_temporary"

    # --- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) the directory; raises OutputDirError with a remedy."""
        directory = self.directory
        if directory.exists() and not directory.is_dir():
            raise OutputDirError(
                f"output dir {directory} is not a directory: point output_dir at a directory"
            )
        try:
            if not directory.exists():
                directory.mkdir(mode=0o750, parents=True)
                log.info("created output dir %s", directory)
            self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise OutputDirError(
                f"output dir {directory} cannot be opened ({_reason(exc)}): "
                "check the path and the volume mount"
            ) from exc
        self._needs_chmod = bool(self._file_mode & _umask())
        self._unnamed = self._allow_unnamed and self._unnamed_temporaries_work()
        self.memory_backed = file_system_type(directory) in _MEMORY_FILE_SYSTEMS
        problem = self.probe()
        if problem is not None:
            raise OutputDirError(
                f"output dir {directory} is not writable ({problem}): "
                "check the volume mount and its permissions"
            )

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _fd(self) -> int:
        if self._dir_fd is None:
            raise RuntimeError("DirectoryPublisher.open() was not called")
        return self._dir_fd

    # --- publishing ---------------------------------------------------------------------

    def publish(self, stem: str, sequence: int, payload: bytes, next_free: NextFree) -> int:
        if self._unnamed:
            fd = os.open(".", _UNNAMED_FLAGS, self._file_mode, dir_fd=self._fd())
            try:
                self._fill(fd, payload)
                return self._link(f"/proc/self/fd/{fd}", None, stem, sequence, next_free)
            finally:
                os.close(fd)
        temp = self._write_temporary(payload)
        try:
            return self._link(temp, self._fd(), stem, sequence, next_free)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=self._fd())

    def _write_temporary(self, payload: bytes) -> str:
        """A complete named temporary holding `payload`, under a name nobody could predict."""
        for _ in range(_TEMPORARY_NAME_ATTEMPTS):
            self._temporaries += 1
            name = layout.temporary_name(self._instance, self._temporaries)
            try:
                fd = os.open(name, _CREATE_FLAGS, self._file_mode, dir_fd=self._fd())
            except FileExistsError:
                continue
            try:
                self._fill(fd, payload)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._fd())
                raise
            os.close(fd)
            return name
        raise FileExistsError(errno.EEXIST, "every temporary name tried was taken")

    def _link(
        self, source: str, source_dir_fd: int | None, stem: str, sequence: int, next_free: NextFree
    ) -> int:
        while True:
            try:
                os.link(
                    source,
                    layout.file_name(stem, sequence),
                    src_dir_fd=source_dir_fd,
                    dst_dir_fd=self._fd(),
                    follow_symlinks=source_dir_fd is None,  # /proc/self/fd/N is a magic link
                )
            except FileExistsError:
                sequence = next_free(stem, sequence)
                continue
            return sequence

    def _fill(self, fd: int, payload: bytes) -> None:
        if self._needs_chmod:
            os.fchmod(fd, self._file_mode)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if self._fsync:
            os.fsync(fd)

    def fsync_directory(self) -> None:
        os.fsync(self._fd())

    # --- the directory ------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._fd(), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def delete(self, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=self._fd())
        except FileNotFoundError:
            return False
        return True

    def scan(self) -> Iterator[OurFile]:
        with os.scandir(self._fd()) as entries:
            for entry in entries:
                if layout.OUR_FILE.fullmatch(entry.name) is None:
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.is_file(follow_symlinks=False) and stat.st_uid == self._uid:
                    yield OurFile(entry.name, stat.st_size, stat.st_mtime_ns)

    def probe(self) -> str | None:
        """Create a file that nobody sees (unnamed, or named and removed at once)."""
        dir_fd = self._fd()
        try:
            try:
                os.close(os.open(".", _UNNAMED_FLAGS, 0o600, dir_fd=dir_fd))
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                os.unlink(self._write_temporary(b""), dir_fd=dir_fd)
        except OSError as exc:
            return f"{_reason(exc)}: {exc.strerror}"
        return None

    def _unnamed_temporaries_work(self) -> bool:
        """Whether this directory takes O_TMPFILE files and /proc can link them (checked once:
        not every file system or container has both)."""
        dir_fd = self._fd()
        try:
            fd = os.open(".", _UNNAMED_FLAGS, 0o600, dir_fd=dir_fd)
        except OSError:
            return False
        probe = layout.temporary_name(self._instance, 0)
        try:
            os.link(f"/proc/self/fd/{fd}", probe, dst_dir_fd=dir_fd, follow_symlinks=True)
            os.unlink(probe, dir_fd=dir_fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def sweep(self, older_than_seconds: float = STALE_TEMPORARY_SECONDS) -> SweepResult:
        """Remove our temporaries older than `older_than_seconds` (left by a dead process).

        Only regular files owned by us with our prefix are removed; anything else named like
        them (a directory, another user's file in a shared directory) is left alone and
        counted as skipped. Temporaries of a live emulator sharing the directory are younger
        than any threshold worth setting, so they are never touched."""
        removed = skipped = 0
        deadline_ns = time.time_ns() - int(older_than_seconds * 1e9)
        with os.scandir(self._fd()) as entries:
            candidates = [entry for entry in entries if layout.is_temporary(entry.name)]
        for entry in candidates:
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not entry.is_file(follow_symlinks=False) or stat.st_uid != self._uid:
                skipped += 1
                continue
            if stat.st_mtime_ns > deadline_ns:
                continue
            try:
                os.unlink(entry.name, dir_fd=self._fd())
            except FileNotFoundError:
                continue
            except OSError:
                skipped += 1
                continue
            removed += 1
        return SweepResult(removed, skipped)


def _reason(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))
