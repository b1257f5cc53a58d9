"""Write: what happens once a file is out of a writer's hands: published or given up.

Either way the file leaves the queue (making room for waiting senders), its stream is told
(`Publication.settled`), and the outcome is counted and, where an operator must know, logged at
most once per reason every 10 s. Retention's deletes and the numbering's collisions from the
same batch are counted here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tap_emulator.layout import file_name
from tap_emulator.observe.logs import ThrottledLog
from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.batch import BatchResult
from tap_emulator.write.errors import reason_of
from tap_emulator.write.numbering import Numbering
from tap_emulator.write.queue import Publication, WriteQueue

log = logging.getLogger("tap_emulator.write.pool")


class Settlement:
    """Releases, tells and counts the files the writers are done with."""

    def __init__(self, queue: WriteQueue, numbering: Numbering, metrics: Metrics) -> None:
        self._queue = queue
        self._numbering = numbering
        self._metrics = metrics
        self._log = ThrottledLog(log)
        self.published_files = 0
        self.dropped_files = 0
        self.on_published: Callable[[Publication], None] | None = None

    def published(self, files: list[Publication], result: BatchResult) -> None:
        now = time.monotonic()
        metrics = self._metrics
        for publication in files:
            metrics.publish_latency.observe(now - publication.arrived)
            metrics.written_bytes.inc(len(publication.payload))
            self._queue.release(publication)
            if self.on_published is not None:
                self.on_published(publication)
            if publication.settled is not None:
                publication.settled(True)
        metrics.files_written.inc(len(files))
        self.published_files += len(files)
        collisions = self._numbering.collisions
        if collisions:
            self._numbering.collisions = 0
            metrics.sequence_collisions.inc(collisions)
        if result.deleted:
            metrics.files_deleted.inc(result.deleted)
        for name, error in result.delete_errors:
            metrics.retention_delete_errors[reason_of(error)].inc()
            self._log.warning(
                "delete",
                "retention could not delete %s (%s: %s); it is no longer counted",
                name,
                reason_of(error).value,
                error.strerror,
            )

    def dropped(self, publication: Publication, error: OSError, *, why: str) -> None:
        reason = reason_of(error)
        self._metrics.files_dropped[reason].inc()
        self._log.warning(
            f"drop-{reason.value}",
            "dropped %s (%s: %s; %s)",
            file_name(publication.stem, publication.sequence),
            reason.value,
            error.strerror,
            why,
        )
        self.dropped_files += 1
        self._queue.release(publication)
        if publication.settled is not None:
            publication.settled(False)
