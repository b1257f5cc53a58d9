"""Write: a bounded queue, batched writer tasks and atomic, never-overwriting publication.

The queue is bounded in files and in bytes, counting files being written until they are
published. When it is full, `put` waits: the stream handler stops reading, HTTP/2 flow
control pushes back on the sender, memory stays bounded and nothing is dropped.

Writer tasks take up to `batch_max_items` files at a time and publish the batch in one
executor call (one thread hop per batch, not per file; see docs/measurements/writers.md).
Each file is written completely (and fsynced, if asked) before it gets its name, then
`link`ed to that name relative to a directory fd opened once at start; `link` fails with
EEXIST instead of overwriting, and the file then takes the next free sequence number. The
file is written either as an unnamed O_TMPFILE file, linked through /proc/self/fd (nothing
to clean up, nothing left by a crash), or, where the file system or /proc does not allow
that, as `.tap-emulator-tmp-<pid>-<n>` created with O_EXCL|O_NOFOLLOW and unlinked after
the link. A reader therefore never sees a partial file, and names never contain `/` (see
naming.py), so nothing can land outside the directory. Named temporaries left by a crash
are removed at start; nothing else in the directory is ever touched.

A failed publish (disk full, read-only volume, I/O error) is counted and retried with
capped exponential backoff while the queue fills and backpressure holds the senders; the
pool reports itself unhealthy until a publish succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.retention import OUR_FILE, RetentionLedger, RetentionPolicy

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tap-emulator-tmp-"
SUFFIX = ".pb"
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_UNNAMED_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
_PROBE_NAME = f"{TEMP_PREFIX}unnamed-probe"
_ERROR_REASONS = {
    errno.ENOSPC: "enospc",
    errno.EDQUOT: "edquot",
    errno.EFBIG: "efbig",
    errno.EIO: "eio",
    errno.EROFS: "erofs",
    errno.EACCES: "eacces",
    errno.EPERM: "eacces",
}


class WriteErrorPolicy(StrEnum):
    """What a writer does with a file it cannot publish (disk full, read-only, I/O error)."""

    BLOCK = "block"  # retry with backoff until it works; the queue fills, senders wait
    DROP = "drop"  # give the file up, count it, and go on with the next


class WriterMode(StrEnum):
    """Where files are published: `auto` on the event loop while that is fast (microseconds
    per file) and in writer threads otherwise; `thread` always in writer threads."""

    AUTO = "auto"
    THREAD = "thread"


# A slice of inline publishing keeps the loop this long at most before it reads streams again.
_INLINE_SLICE_SECONDS = 0.002
# Per-file times that move publishing onto the loop, and back off it (with hysteresis).
_FAST_FILE_SECONDS = 40e-6
_SLOW_FILE_SECONDS = 200e-6


def publish_inline_next(
    inline: bool,
    files: int,
    seconds: float,
    *,
    failed: bool,
    fast_file_seconds: float,
    slow_file_seconds: float,
) -> bool:
    """Auto mode's choice for the next batch, from how the last one went.

    Onto the loop only after a batch of at least 16 files averaged under the fast threshold
    in the thread; back to the thread after an error or a batch over the slow threshold."""
    per_file = seconds / max(1, files)
    if failed:
        return False
    if inline:
        return per_file <= slow_file_seconds
    return files >= 16 and per_file < fast_file_seconds


class OutputDirError(Exception):
    """The output directory cannot be used; raised at start with the path and a remedy."""


@dataclass(slots=True)
class Publication:
    """One file to publish as `<stem>-<sequence>.pb` (or the next free number)."""

    stem: str
    sequence: int
    payload: bytes
    arrived: float = field(default_factory=time.monotonic)
    done: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class _BatchResult:
    published: int
    collisions: int
    deleted: int
    error: OSError | None
    seconds: float = 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterPool:
    """Publishes files into one directory, `writers` batches at a time."""

    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        *,
        writers: int = 1,
        batch_max_items: int = 256,
        max_items: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        fsync: bool = False,
        file_mode: int = 0o640,
        retry_initial_seconds: float = 0.05,
        retry_max_seconds: float = 5.0,
        retention: RetentionPolicy | None = None,
        on_error: WriteErrorPolicy = WriteErrorPolicy.BLOCK,
        unnamed_temporaries: bool = True,
        mode: WriterMode = WriterMode.AUTO,
        fast_file_seconds: float = _FAST_FILE_SECONDS,
        slow_file_seconds: float = _SLOW_FILE_SECONDS,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._writers = writers
        self._batch_max_items = batch_max_items
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._file_mode = file_mode
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._ledger = RetentionLedger(retention) if retention and retention.enabled else None
        self._on_error = on_error
        self.dropped = 0

        self._dir_fd: int | None = None
        self._needs_chmod = False
        self._temp_names = itertools.count()
        self._pid = os.getpid()
        self._unnamed_temporaries = False
        self._allow_unnamed = unnamed_temporaries
        self._mode = mode
        self._fast_file_seconds = fast_file_seconds
        self._slow_file_seconds = slow_file_seconds
        self._inline = False  # auto mode starts in the thread and moves once files prove fast
        self._pending: deque[Publication] = deque()
        self._waiters: deque[tuple[Publication, asyncio.Future[None]]] = deque()
        self._items = 0
        self._bytes = 0
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self.failing: OSError | None = None
        self.published = 0

    # --- lifecycle ----------------------------------------------------------------------

    def open(self) -> int:
        """Open (creating if needed) the directory and sweep stale temporaries; returns how
        many were removed. Raises OutputDirError with a remedy when the directory is unusable."""
        try:
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise OutputDirError(
                f"output dir {self.directory} cannot be opened "
                f"({errno.errorcode.get(exc.errno or 0, exc)}): "
                "check the path and the volume mount"
            ) from exc
        umask = os.umask(0)
        os.umask(umask)
        self._needs_chmod = bool(self._file_mode & umask)
        removed = self._sweep_temporaries()
        self._unnamed_temporaries = self._allow_unnamed and self._unnamed_temporaries_work()
        ledger = self._ledger
        if ledger is not None:
            ledger.scan(self._dir_fd)
            self._metrics.files_deleted.inc(self._delete(ledger.over_cap()))
            self._metrics.watch_retention(lambda: ledger.total_bytes, lambda: len(ledger))
        problem = self.probe_writable()
        if problem is not None:
            raise OutputDirError(
                f"output dir {self.directory} is not writable ({problem}): "
                "check the volume mount and its permissions"
            )
        return removed

    async def start(self) -> None:
        if self._dir_fd is None:
            self.open()
        self._executor = ThreadPoolExecutor(self._writers, thread_name_prefix="tap-writer")
        self._metrics.watch_queue(
            lambda: self._items, lambda: self._bytes, self.max_items, self.max_bytes
        )
        self._tasks = [
            asyncio.create_task(self._run_writer(), name=f"tap-writer-{n}")
            for n in range(self._writers)
        ]

    async def drain(self, within_seconds: float) -> int:
        """Wait until every accepted file is published; returns how many were not."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_seconds):
                await self._idle.wait()
        return self.unpublished

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    @property
    def unpublished(self) -> int:
        """Accepted files not yet published: queued, being written, or waiting for room."""
        return self._items + len(self._waiters)

    # --- accepting ----------------------------------------------------------------------

    def _has_room(self, size: int) -> bool:
        if self._items == 0:
            return True  # an oversized file is admitted alone rather than never
        return self._items < self.max_items and self._bytes + size <= self.max_bytes

    def try_put(self, publication: Publication) -> bool:
        """Queue without waiting if there is room and nobody is waiting ahead of us."""
        if self._waiters or not self._has_room(len(publication.payload)):
            return False
        self._admit(publication)
        return True

    async def put(self, publication: Publication) -> None:
        """Queue a file, waiting (in arrival order) while the queue is full.

        Once called, the file is owned by the pool even if the caller is cancelled while
        waiting: it is queued as soon as there is room, and counted by `unpublished`.
        """
        if self.try_put(publication):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((publication, waiter))
        self._idle.clear()
        started = time.monotonic()
        try:
            await asyncio.shield(waiter)
        finally:
            self._metrics.backpressure.inc(time.monotonic() - started)

    def _admit(self, publication: Publication) -> None:
        self._pending.append(publication)
        self._items += 1
        self._bytes += len(publication.payload)
        self._idle.clear()
        self._work.set()

    def _release(self, publication: Publication) -> None:
        self._items -= 1
        self._bytes -= len(publication.payload)
        waiters = self._waiters
        while waiters and self._has_room(len(waiters[0][0].payload)):
            waiting, waiter = waiters.popleft()
            self._admit(waiting)
            if not waiter.done():
                waiter.set_result(None)
        if self._items == 0 and not waiters:
            self._idle.set()

    # --- writing ------------------------------------------------------------------------

    async def _run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._retry_initial
        while True:
            if not self._pending:
                self._work.clear()
                await self._work.wait()
                continue
            batch = [
                self._pending.popleft()
                for _ in range(min(self._batch_max_items, len(self._pending)))
            ]
            if self._inline:
                result = self._publish_batch(batch, _INLINE_SLICE_SECONDS)
            else:
                result = await loop.run_in_executor(self._executor, self._publish_batch, batch)
            self._choose_where_to_publish(result)
            self._settle(batch[: result.published])
            if result.collisions:
                self._metrics.sequence_collisions.inc(result.collisions)
            if result.deleted:
                self._metrics.files_deleted.inc(result.deleted)
            if result.error is None:
                self.failing = None
                backoff = self._retry_initial
                if result.published < len(batch):  # an inline slice ran out of time
                    self._pending.extendleft(reversed(batch[result.published :]))
                if self._inline:
                    await asyncio.sleep(0)  # let the streams be read between slices
                continue
            self._record_failure(result.error)
            if result.published == len(batch):
                continue  # every file is out; only the directory's fsync failed
            failed, rest = batch[result.published], batch[result.published + 1 :]
            if self._on_error is WriteErrorPolicy.DROP:
                self._drop(failed, result.error)
                self._pending.extendleft(reversed(rest))
                continue
            self._pending.extendleft(reversed([failed, *rest]))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._retry_max)

    def _settle(self, published: list[Publication]) -> None:
        now = time.monotonic()
        metrics = self._metrics
        for publication in published:
            metrics.publish_latency.observe(now - publication.arrived)
            metrics.written_bytes.inc(len(publication.payload))
            self._release(publication)
            if publication.done is not None:
                publication.done()
        metrics.files_written.inc(len(published))
        self.published += len(published)

    def _drop(self, publication: Publication, error: OSError) -> None:
        self._metrics.files_dropped[_ERROR_REASONS.get(error.errno or 0, "other")].inc()
        self.dropped += 1
        self._release(publication)
        if publication.done is not None:
            publication.done()

    def _record_failure(self, error: OSError) -> None:
        reason = _ERROR_REASONS.get(error.errno or 0, "other")
        self._metrics.write_errors[reason].inc()
        if self.failing is None or self.failing.errno != error.errno:
            log.error(
                "cannot publish in %s (%s: %s); retrying while senders are held back",
                self.directory,
                reason,
                error.strerror,
            )
        self.failing = error

    # --- in the executor: plain blocking syscalls ---------------------------------------

    def _publish_batch(
        self, batch: list[Publication], budget_seconds: float | None = None
    ) -> _BatchResult:
        """Publish files in order until done, an error, or (inline) the time budget is spent."""
        collisions = deleted = 0
        started = time.perf_counter()
        for index, publication in enumerate(batch):
            try:
                collisions += self._publish(publication)
            except OSError as exc:
                return _BatchResult(index, collisions, deleted, exc, time.perf_counter() - started)
            if self._ledger is not None:
                name = f"{publication.stem}-{publication.sequence}{SUFFIX}"
                deleted += self._delete(self._ledger.admit(name, len(publication.payload)))
            if budget_seconds is not None and time.perf_counter() - started > budget_seconds:
                return _BatchResult(
                    index + 1, collisions, deleted, None, time.perf_counter() - started
                )
        error = None
        if self._fsync and batch:
            try:
                os.fsync(self._fd())
            except OSError as exc:
                error = exc
        return _BatchResult(len(batch), collisions, deleted, error, time.perf_counter() - started)

    def _choose_where_to_publish(self, result: _BatchResult) -> None:
        """In auto mode, publish on the event loop while files take microseconds (tmpfs, a
        fast local disk) and in the writer thread as soon as they take longer or fail.

        On the loop there is no thread hop and no contention for the GIL between the loop and
        the writer thread, which measured 1.37x the throughput at 0.75x the CPU per file
        (benchmarks/profile/README.md); in the thread a slow disk cannot stall the loop."""
        if self._mode is not WriterMode.AUTO or self._fsync:
            return
        inline = publish_inline_next(
            self._inline,
            result.published,
            result.seconds,
            failed=result.error is not None,
            fast_file_seconds=self._fast_file_seconds,
            slow_file_seconds=self._slow_file_seconds,
        )
        if inline != self._inline:
            per_file_us = 1e6 * result.seconds / max(1, result.published)
            log.log(
                logging.DEBUG if inline else logging.INFO,
                "publishing %s (%.0f us per file%s)",
                "on the event loop" if inline else "in the writer thread",
                per_file_us,
                ", after an error" if result.error is not None else "",
            )
        self._inline = inline

    def _delete(self, names: list[str]) -> int:
        """Delete files retention gave up on; a file already gone (deleted by hand) is fine."""
        deleted = 0
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._fd())
                deleted += 1
        return deleted

    def _publish(self, publication: Publication) -> int:
        """Publish one file; returns how many taken names it had to skip."""
        if self._unnamed_temporaries:
            return self._publish_unnamed(publication)
        dir_fd = self._fd()
        temp = f"{TEMP_PREFIX}{self._pid}-{next(self._temp_names)}"
        fd = os.open(temp, _OPEN_FLAGS, self._file_mode, dir_fd=dir_fd)
        try:
            try:
                self._fill(fd, publication.payload)
            finally:
                os.close(fd)
            return self._link_free(temp, dir_fd, publication)
        finally:
            os.unlink(temp, dir_fd=dir_fd)

    def _publish_unnamed(self, publication: Publication) -> int:
        """The same through an O_TMPFILE file: it has no name until it is linked, so a crash
        can leave nothing behind, and there is no temporary name to clean up."""
        fd = os.open(".", _UNNAMED_FLAGS, self._file_mode, dir_fd=self._fd())
        try:
            self._fill(fd, publication.payload)
            return self._link_free(f"/proc/self/fd/{fd}", None, publication)
        finally:
            os.close(fd)

    def _fill(self, fd: int, payload: bytes) -> None:
        if self._needs_chmod:
            os.fchmod(fd, self._file_mode)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if self._fsync:
            os.fsync(fd)

    def _link_free(self, source: str, source_dir_fd: int | None, publication: Publication) -> int:
        """Link `source` under the publication's name, or the next free number; returns how
        many taken names were skipped. `link` never replaces an existing name."""
        dir_fd = self._fd()
        sequence = publication.sequence
        skipped = 0
        while True:
            try:
                os.link(
                    source,
                    f"{publication.stem}-{sequence}{SUFFIX}",
                    src_dir_fd=source_dir_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=source_dir_fd is None,  # /proc/self/fd/N is a magic link
                )
            except FileExistsError:
                skipped += 1
                sequence = max(sequence, self.highest_published(publication.stem)) + 1
                continue
            publication.sequence = sequence
            return skipped

    # --- the directory ------------------------------------------------------------------

    def _fd(self) -> int:
        if self._dir_fd is None:
            raise RuntimeError("WriterPool.open() was not called")
        return self._dir_fd

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._fd(), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def existing_stems(self) -> Iterator[str]:
        """The stems of the files in the directory whose names are ours (one scan)."""
        with os.scandir(self._fd()) as entries:
            for entry in entries:
                if OUR_FILE.fullmatch(entry.name):
                    yield entry.name.rsplit("-", 1)[0]

    def highest_published(self, stem: str) -> int:
        """The highest n with `<stem>-1..n.pb` all on disk: O(log n) lookups, no scan.

        Sequences are published contiguously from 1, so a galloping search finds the end of
        the run; a gap (a file deleted by hand) can only make the answer lower, and the
        final link's EEXIST check still keeps every existing file intact.
        """
        if not self._exists(f"{stem}-1{SUFFIX}"):
            return 0
        low, high = 1, 2
        while self._exists(f"{stem}-{high}{SUFFIX}"):
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if self._exists(f"{stem}-{middle}{SUFFIX}"):
                low = middle
            else:
                high = middle
        return low

    def probe_writable(self) -> str | None:
        """Try to create a file in the directory; None if that works, else why not.

        An unnamed O_TMPFILE file leaves nothing for anyone to see; where the file system
        does not support it, a named temporary is created and removed at once."""
        dir_fd = self._fd()
        try:
            try:
                fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
                os.close(fd)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                temp = f"{TEMP_PREFIX}{os.getpid()}-probe"
                os.close(os.open(temp, _OPEN_FLAGS, 0o600, dir_fd=dir_fd))
                os.unlink(temp, dir_fd=dir_fd)
        except OSError as exc:
            return f"{errno.errorcode.get(exc.errno or 0, 'error')}: {exc.strerror}"
        return None

    def _unnamed_temporaries_work(self) -> bool:
        """Whether this directory takes O_TMPFILE files and /proc can link them (checked once:
        not every file system or container has both)."""
        dir_fd = self._fd()
        try:
            fd = os.open(".", _UNNAMED_FLAGS, 0o600, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            os.link(f"/proc/self/fd/{fd}", _PROBE_NAME, dst_dir_fd=dir_fd, follow_symlinks=True)
            os.unlink(_PROBE_NAME, dir_fd=dir_fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    @property
    def publishing_inline(self) -> bool:
        return self._inline

    @property
    def publishing_method(self) -> str:
        return "o_tmpfile" if self._unnamed_temporaries else "named_temporary"

    def _sweep_temporaries(self) -> int:
        """Remove temporaries left by dead processes (ours only, by prefix)."""
        removed = 0
        own_pid = os.getpid()
        with os.scandir(self._fd()) as entries:
            names = [entry.name for entry in entries if entry.name.startswith(TEMP_PREFIX)]
        for name in names:
            pid_text = name[len(TEMP_PREFIX) :].split("-", 1)[0]
            pid = int(pid_text) if pid_text.isdigit() else own_pid
            if pid != own_pid and _pid_alive(pid):
                continue  # another live emulator shares this directory
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._fd())
                removed += 1
        if removed:
            log.info(
                "removed %d temporary files left by an earlier run in %s", removed, self.directory
            )
        return removed
