"""Write: one batch of files published in order: plain blocking calls, made in a writer thread
(or, on a memory-backed directory, on the event loop within a time budget).

It stops at the first file that fails and says how far it got; deletes that retention asks for
are made after each file, and those that fail are reported, not raised.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass

from tap_emulator.layout import file_name
from tap_emulator.write.errors import BUG
from tap_emulator.write.numbering import Numbering
from tap_emulator.write.publisher import Publisher
from tap_emulator.write.queue import Publication
from tap_emulator.write.retention import RetentionLedger

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchResult:
    published: int  # the first `published` files of the batch are out
    error: OSError | None  # why the next one is not
    deleted: int = 0
    delete_errors: tuple[tuple[str, OSError], ...] = ()
    seconds: float = 0.0


def publish_batch(
    batch: list[Publication],
    publisher: Publisher,
    numbering: Numbering,
    ledger: RetentionLedger | None,
    *,
    fsync: bool = False,
    budget_seconds: float | None = None,
) -> BatchResult:
    """Publish files in order until done, an error, or (on the loop) the time budget."""
    started = time.perf_counter()
    deleted = 0
    delete_errors: list[tuple[str, OSError]] = []
    for index, publication in enumerate(batch):
        try:
            first = numbering.first_try(publication.stem, publication.sequence)
            publication.sequence = publisher.publish(
                publication.stem, first, publication.payload, numbering.next_free
            )
        except OSError as exc:
            return BatchResult(
                index, exc, deleted, tuple(delete_errors), time.perf_counter() - started
            )
        except Exception as exc:  # a bug: this file is dropped, not every file after it
            log.exception("publishing %s failed unexpectedly", publication.stem)
            bug = OSError(errno.EIO, f"internal error: {exc!r}")
            bug.filename = BUG
            return BatchResult(
                index, bug, deleted, tuple(delete_errors), time.perf_counter() - started
            )
        if ledger is not None:
            name = file_name(publication.stem, publication.sequence)
            for doomed in ledger.admit(name, len(publication.payload)):
                try:
                    deleted += publisher.delete(doomed)
                except OSError as exc:
                    delete_errors.append((doomed, exc))
        if budget_seconds is not None and time.perf_counter() - started > budget_seconds:
            return BatchResult(
                index + 1, None, deleted, tuple(delete_errors), time.perf_counter() - started
            )
    error = None
    if fsync and batch:
        try:
            publisher.fsync_directory()
        except OSError as exc:
            error = exc
    seconds = time.perf_counter() - started
    return BatchResult(len(batch), error, deleted, tuple(delete_errors), seconds)
