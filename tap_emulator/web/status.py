"""The page's header: the emulator's health and rates, read from the metric table (the numbers
/metrics exports) by the emulator and sent to the page's process once a second, and the
index's own state (how far behind the files it is, what it skipped)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tap_emulator.observe.metrics import Metrics
from tap_emulator.web.feed import Indexer

# Sums over every label of these series; the page shows them and their rates.
TOTALS = {
    "messages": "tap_emulator_messages_received_total",
    "files": "tap_emulator_files_written_total",
    "bytes": "tap_emulator_written_bytes_total",
    "droppedFiles": "tap_emulator_files_dropped_total",
    "droppedTransactions": "tap_emulator_extproc_transactions_dropped_total",
    "refusedStreams": "tap_emulator_streams_refused_total",
}
GAUGES = {
    "openStreams": "tap_emulator_streams_open",
    "queueItems": "tap_emulator_queue_items",
    "queueCapacityItems": "tap_emulator_queue_capacity_items",
}
# The index is said to lag once the oldest file waiting for it is older than this.
LAG_SHOWN_SECONDS = 1.0


def read_samples(metrics: Metrics) -> dict[str, float]:
    """The sums of TOTALS and GAUGES, in one pass over the registry."""
    wanted = {name: key for key, name in (TOTALS | GAUGES).items()}
    sums = dict.fromkeys(TOTALS | GAUGES, 0.0)
    for family in metrics.registry.collect():
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is not None:
                sums[key] += sample.value
    return sums


def emulator_status(metrics: Metrics, problem: Callable[[], str | None]) -> dict[str, Any]:
    """What the emulator sends the page's process (in the emulator, once a second)."""
    return {"problem": problem(), "samples": read_samples(metrics)}


def index_state(indexer: Indexer, skipped_before: int = 0) -> dict[str, Any]:
    feed = indexer.feed
    behind = feed.oldest_age_seconds()
    return {
        "held": len(indexer.index),
        "max": indexer.index.max_transactions,
        "forgotten": indexer.index.forgotten,
        "pending": feed.pending,
        "skipped": feed.skipped + skipped_before,
        "behindSeconds": round(behind, 3),
        "lagging": behind >= LAG_SHOWN_SECONDS,
    }


class LiveStatus:
    """In the page's process: the latest numbers from the emulator and their rates."""

    def __init__(
        self,
        indexer: Indexer,
        pages: Callable[[], dict[str, int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._indexer = indexer
        self._pages = pages
        self._clock = clock
        self._latest: dict[str, Any] | None = None
        self._previous: tuple[float, dict[str, float]] | None = None
        self._rates = dict.fromkeys(TOTALS, 0.0)

    def update(self, status: dict[str, Any]) -> None:
        now = self._clock()
        samples = status["samples"]
        if self._previous is not None:
            then, earlier = self._previous
            elapsed = max(now - then, 1e-3)
            self._rates = {key: max(0.0, samples[key] - earlier[key]) / elapsed for key in TOTALS}
        self._previous = (now, samples)
        self._latest = status

    def read(self) -> dict[str, Any]:
        latest = self._latest
        handoff = (latest or {}).get("handoff", {})
        found: dict[str, Any] = {
            "mode": "live",
            "index": index_state(self._indexer, int(handoff.get("skipped", 0))),
            "pages": self._pages(),
        }
        if latest is None:
            return {**found, "ready": None, "problem": "waiting for the emulator's numbers"}
        samples = latest["samples"]
        return {
            **found,
            "ready": latest["problem"] is None,
            "problem": latest["problem"],
            "totals": {key: samples[key] for key in TOTALS},
            "rates": {key: round(value, 2) for key, value in self._rates.items()},
            "gauges": {key: samples[key] for key in GAUGES},
        }
