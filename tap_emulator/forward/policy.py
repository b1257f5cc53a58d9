"""Forward, policy: what the forward queue does when the tool is slower than the mesh."""

from __future__ import annotations

from enum import StrEnum

from tap_emulator.labels import ForwardDrop, ForwardState


class WhenFull(StrEnum):
    """Which trace gives way when the forward queue is full (it never makes a source wait)."""

    DROP_OLDEST = "drop_oldest"  # the longest-queued trace goes: the tool keeps the freshest
    DROP_NEWEST = "drop_newest"  # the new trace goes: the tool keeps what was queued first


def full_queue_drop(state: ForwardState) -> ForwardDrop:
    """Why a trace that found no room is dropped: the tool is slow (connected), or away."""
    return ForwardDrop.QUEUE_FULL if state is ForwardState.READY else ForwardDrop.DISCONNECTED
