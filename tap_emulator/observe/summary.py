"""Observe: one INFO line of traffic totals every `log_summary_seconds`, and none when idle.

A server that logs nothing per message still says, once a minute, what it carried: streams
opened, messages, files and bytes written, what was dropped, and the queue's depth. The numbers
are read from the metric table, so the line and /metrics never disagree.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tap_emulator.observe.metrics import Metrics

log = logging.getLogger("tap_emulator")

_COUNTED = {
    "streams": "tap_emulator_streams_opened_total",
    "messages": "tap_emulator_messages_received_total",
    "files": "tap_emulator_files_written_total",
    "bytes": "tap_emulator_written_bytes_total",
    "dropped_files": "tap_emulator_files_dropped_total",
    "dropped_transactions": "tap_emulator_extproc_transactions_dropped_total",
    "refused_streams": "tap_emulator_streams_refused_total",
}


@dataclass(frozen=True, slots=True)
class Totals:
    values: dict[str, float]

    def since(self, earlier: Totals) -> dict[str, float]:
        return {key: value - earlier.values.get(key, 0.0) for key, value in self.values.items()}


def read_totals(metrics: Metrics) -> Totals:
    sums = dict.fromkeys(_COUNTED, 0.0)
    names = {name: key for key, name in _COUNTED.items()}
    for family in metrics.registry.collect():
        for sample in family.samples:
            key = names.get(sample.name)
            if key is not None:
                sums[key] += sample.value
    return Totals(sums)


def summary_line(change: dict[str, float], queue_items: int, seconds: float) -> str | None:
    """The line for one period, or None when nothing happened in it."""
    if not any(change[key] for key in ("streams", "messages", "files", "refused_streams")):
        return None
    dropped = change["dropped_files"] + change["dropped_transactions"]
    return (
        f"last {seconds:g}s: {change['streams']:.0f} streams opened, "
        f"{change['messages']:.0f} messages, {change['files']:.0f} files "
        f"({change['bytes'] / 1e6:.1f} MB), {dropped:.0f} dropped, "
        f"{change['refused_streams']:.0f} streams refused, queue {queue_items} files"
    )


class TrafficSummary:
    def __init__(self, metrics: Metrics, queue_items: Callable[[], int]) -> None:
        self._metrics = metrics
        self._queue_items = queue_items

    async def run(self, period_seconds: float) -> None:
        if period_seconds <= 0:
            return
        last = read_totals(self._metrics)
        while True:
            await asyncio.sleep(period_seconds)
            now = read_totals(self._metrics)
            line = summary_line(now.since(last), self._queue_items(), period_seconds)
            if line is not None:
                log.info("%s", line)
            last = now
