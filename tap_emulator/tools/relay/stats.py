"""The relay's counters, and the totals line it logs when it stops."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RelayStats:
    """What the relay read, sent and skipped. `read` counts traces queued for sending;
    skipped ones are counted by why: over the weight bound (`oversize`), not a TraceWrapper
    (`undecodable`), cut by a lost connection (`cut_short`), or with nothing in them
    (`empty`, which loses nothing)."""

    read: int = 0
    forwarded: int = 0
    confirmed: int = 0
    unconfirmed: int = 0
    dropped_oversize: int = 0
    dropped_undecodable: int = 0
    cut_short: int = 0
    empty: int = 0
    stray_bytes: int = 0
    attaches: int = 0
    streams: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_oversize + self.dropped_undecodable + self.cut_short

    def totals_line(self, unsent: int, full_waits: int, full_seconds: float) -> str:
        """`relay stopped read=... ` with every counter, in a fixed order."""
        return (
            f"relay stopped read={self.read} forwarded={self.forwarded} "
            f"confirmed={self.confirmed} unconfirmed={self.unconfirmed} unsent={unsent} "
            f"dropped={self.dropped} (oversize={self.dropped_oversize} "
            f"undecodable={self.dropped_undecodable} cut_short={self.cut_short}) "
            f"empty={self.empty} stray_bytes={self.stray_bytes} attaches={self.attaches} "
            f"streams={self.streams} queue_full_waits={full_waits} "
            f"queue_full_seconds={full_seconds:.2f}"
        )
