"""The page's header: the emulator's health and rates, read from the metric table (the numbers
/metrics exports), and the index's own state (how far behind it is, what it skipped)."""

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


def index_state(indexer: Indexer) -> dict[str, Any]:
    feed = indexer.feed
    behind = feed.oldest_age_seconds()
    return {
        "held": len(indexer.index),
        "max": indexer.index.max_transactions,
        "forgotten": indexer.index.forgotten,
        "pending": feed.pending,
        "skipped": feed.skipped,
        "behindSeconds": round(behind, 3),
        "lagging": behind >= LAG_SHOWN_SECONDS,
        "loopShare": round(indexer.pace.share, 3),
    }


class LiveStatus:
    """Health, totals and per-second rates since the previous reading."""

    def __init__(
        self,
        metrics: Metrics,
        problem: Callable[[], str | None],
        indexer: Indexer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._problem = problem
        self._indexer = indexer
        self._clock = clock
        self._last = read_samples(metrics)
        self._last_at = clock()
        self._rates = dict.fromkeys(TOTALS, 0.0)

    def read(self) -> dict[str, Any]:
        now = self._clock()
        samples = read_samples(self._metrics)
        elapsed = now - self._last_at
        if elapsed >= 0.5:
            self._rates = {
                key: max(0.0, samples[key] - self._last[key]) / elapsed for key in TOTALS
            }
            self._last, self._last_at = samples, now
        problem = self._problem()
        return {
            "mode": "live",
            "ready": problem is None,
            "problem": problem,
            "totals": {key: samples[key] for key in TOTALS},
            "rates": {key: round(value, 2) for key, value in self._rates.items()},
            "gauges": {key: samples[key] for key in GAUGES},
            "index": index_state(self._indexer),
        }
