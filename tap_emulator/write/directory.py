"""Write: every system call on the output directory, the file system's `Publisher`.

`DirectoryPublisher` writes each file completely (and fsyncs it, if asked) before the file gets
its name, then `link`s it to that name relative to a directory fd opened once at start. `link`
fails with EEXIST instead of replacing a file, and the file then takes the next free number.
The file is written as an unnamed O_TMPFILE file linked through /proc/self/fd (nothing to clean
up, nothing a crash can leave), or, where the file system or /proc does not allow that, as a
named temporary created with O_EXCL|O_NOFOLLOW under an unpredictable name (see layout.py) and
unlinked after the link. A reader therefore never sees a partial file, and since names never
hold `/`, nothing can land outside the directory.

Everything here blocks; the writer pool calls it from writer threads (or, on a memory-backed
directory only, from the event loop: see pool.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from tap_emulator import layout
from tap_emulator.write.housekeeping import (
    MEMORY_FILE_SYSTEMS,
    file_system_type,
    process_umask,
    scan_our_files,
    sweep_temporaries,
)
from tap_emulator.write.publisher import (
    STALE_TEMPORARY_SECONDS,
    NextFree,
    OurFile,
    OutputDirError,
    SweepResult,
)

log = logging.getLogger(__name__)

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_UNNAMED_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
# A name taken by someone else between our choice and our create costs a retry with a new name.
_TEMPORARY_NAME_ATTEMPTS = 8


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
        self._needs_chmod = bool(self._file_mode & process_umask())
        self._unnamed = self._allow_unnamed and self._unnamed_temporaries_work()
        self.memory_backed = file_system_type(directory) in MEMORY_FILE_SYSTEMS
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
        return scan_our_files(self._fd(), self._uid)

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
        """Remove our temporaries older than `older_than_seconds` (see housekeeping.py)."""
        return sweep_temporaries(self._fd(), self._uid, older_than_seconds)


def _reason(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))
