"""Write: the writer tasks that take files from the queue and publish them, and their policies.

Writers take up to `batch_max_items` files at a time and publish the batch in one executor call
(one thread hop per batch, not per file; docs/measurements/writers.md). On a memory-backed
directory (tmpfs), where no call can wait for a device, `writer_mode: auto` publishes on the
event loop instead, in slices of at most 2 ms between reads of the streams: that measured 1.37x
the throughput, with no thread hop and none of the context switches and GIL hand-overs between
the loop and a writer thread. Anywhere else every file-system call runs in a writer thread, so a
frozen or stalled disk never stops the server from answering health checks, reading streams or
acting on signals.

What a failure does depends on whether retrying can cure it:
- errors of the disk as a whole (ENOSPC, EDQUOT, EROFS, EIO, EACCES, out of descriptors) are
  counted and retried with capped exponential backoff; the pool reports itself unready, the
  queue fills and backpressure holds the senders (or, with `on_write_error: drop`, each file
  that fails is given up, counted, and the writers go on);
- errors of one file (EFBIG over the file size limit, ENAMETOOLONG) drop that file, counted by
  reason, and publication goes on with the next.
A writer task that dies of a bug is logged with its traceback, counted, and restarted; the pool
is unready until it runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.batch import BatchResult, publish_batch
from tap_emulator.write.errors import is_file_error, reason_of
from tap_emulator.write.numbering import Numbering
from tap_emulator.write.policy import WriteErrorPolicy, WriterMode
from tap_emulator.write.publisher import Publisher
from tap_emulator.write.queue import Publication, WriteQueue
from tap_emulator.write.retention import RetentionLedger
from tap_emulator.write.settle import Settlement

log = logging.getLogger(__name__)

# A slice of publishing on the loop keeps it this long at most before it reads streams again.
_LOOP_SLICE_SECONDS = 0.002
_RESTART_BACKOFF_SECONDS = 1.0
# A batch that takes this long is waiting for a stuck disk: readiness says so.
_STUCK_AFTER_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """How the pool runs: the writer settings (config.py), and the retry backoff (not a
    setting) for tests to vary."""

    writers: int = 1
    batch_max_items: int = 256
    fsync: bool = False
    on_error: WriteErrorPolicy = WriteErrorPolicy.BLOCK
    mode: WriterMode = WriterMode.AUTO
    retry_initial_seconds: float = 0.05
    retry_max_seconds: float = 5.0


class WriterPool:
    """Runs `writers` tasks that drain `queue` into `publisher`."""

    def __init__(
        self,
        queue: WriteQueue,
        publisher: Publisher,
        numbering: Numbering,
        metrics: Metrics,
        options: WriterOptions = WriterOptions(),
        ledger: RetentionLedger | None = None,
    ) -> None:
        self.queue = queue
        self.publisher = publisher
        self.numbering = numbering
        self._metrics = metrics
        self._options = options
        self._ledger = ledger
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._on_loop = False
        self._down = 0  # writer tasks that died and wait to be restarted
        self._batch_started: float | None = None  # when the batch being published was taken
        self._settlement = Settlement(queue, numbering, metrics)
        self.failing: OSError | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writers (the publisher must be open: where they publish depends on it)."""
        options = self._options
        self._on_loop = (
            options.mode is WriterMode.AUTO and not options.fsync and self.publisher.memory_backed
        )
        self._executor = ThreadPoolExecutor(self._options.writers, thread_name_prefix="tap-writer")
        self._tasks = [
            asyncio.create_task(self._supervise(n), name=f"tap-writer-{n}")
            for n in range(self._options.writers)
        ]

    async def drain(self, within_seconds: float) -> int:
        """Wait until every accepted file is out; returns how many are not."""
        await self.queue.wait_until_empty(within_seconds)
        return self.queue.unpublished

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

    @property
    def published(self) -> int:
        return self._settlement.published_files

    @property
    def dropped(self) -> int:
        return self._settlement.dropped_files

    @property
    def on_published(self) -> Callable[[Publication], None] | None:
        """Called on the event loop for each file once it is on disk (the live page's feed)."""
        return self._settlement.on_published

    @on_published.setter
    def on_published(self, hook: Callable[[Publication], None] | None) -> None:
        self._settlement.on_published = hook

    @property
    def publishing_on_loop(self) -> bool:
        return self._on_loop

    def problem(self) -> str | None:
        """Why the writers cannot publish now, or None."""
        if self._down:
            return f"{self._down} writer task(s) failed and are restarting"
        started = self._batch_started
        if started is not None and time.monotonic() - started > _STUCK_AFTER_SECONDS:
            waited = time.monotonic() - started
            return f"a batch of files has been waiting {waited:.0f}s for the disk"
        failing = self.failing
        if failing is not None:
            return f"{reason_of(failing).value}: {failing.strerror}"
        return None

    # --- the writer loop ----------------------------------------------------------------

    async def _supervise(self, number: int) -> None:
        """Run one writer; a writer that dies of a bug is logged, counted and restarted."""
        while True:
            try:
                await self._run_writer()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("writer %d failed; restarting it", number)
                self._metrics.writer_restarts.inc()
                self._down += 1
                try:
                    await asyncio.sleep(_RESTART_BACKOFF_SECONDS)
                finally:
                    self._down -= 1

    async def _run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self.queue
        backoff = self._options.retry_initial_seconds
        while True:
            await queue.wait_for_work()
            batch = queue.take(self._options.batch_max_items)
            self._batch_started = time.monotonic()
            try:
                if self._on_loop:
                    result = self._batch(batch, _LOOP_SLICE_SECONDS)
                else:
                    result = await loop.run_in_executor(self._executor, self._batch, batch)
            except Exception:
                queue.give_back(batch)  # nothing in it was published: the batch never started
                raise
            finally:
                self._batch_started = None
            self._settlement.published(batch[: result.published], result)
            error = result.error
            if error is None:
                self.failing = None
                backoff = self._options.retry_initial_seconds
                queue.give_back(batch[result.published :])  # a slice on the loop ran out of time
                if self._on_loop:
                    await asyncio.sleep(0)  # let the streams be read between slices
                continue
            if result.published == len(batch):
                self._record_failure(error)  # every file is out; only the directory's fsync failed
                continue
            failed, rest = batch[result.published], batch[result.published + 1 :]
            if is_file_error(error):
                self._settlement.dropped(failed, error, why="that file cannot be written")
                queue.give_back(rest)
                continue
            self._record_failure(error)
            if self._options.on_error is WriteErrorPolicy.DROP:
                self._settlement.dropped(failed, error, why="on_write_error: drop")
                queue.give_back(rest)
                continue
            queue.give_back([failed, *rest])
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._options.retry_max_seconds)

    def _record_failure(self, error: OSError) -> None:
        reason = reason_of(error)
        self._metrics.write_errors[reason].inc()
        if self.failing is None or self.failing.errno != error.errno:
            holding = (
                "dropping each file that fails (on_write_error: drop)"
                if self._options.on_error is WriteErrorPolicy.DROP
                else "retrying while senders are held back"
            )
            log.error("cannot publish (%s: %s); %s", reason.value, error.strerror, holding)
        self.failing = error

    def _batch(self, batch: list[Publication], budget_seconds: float | None = None) -> BatchResult:
        return publish_batch(
            batch,
            self.publisher,
            self.numbering,
            self._ledger,
            fsync=self._options.fsync,
            budget_seconds=budget_seconds,
        )
