"""Capped exponential backoff with jitter, for re-attaching to Envoy and reconnecting to
the emulator."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `initial_seconds` up to `max_seconds`; `reset` after a
    success. Each is jittered down by up to 20% so that many relays do not retry in step."""

    def __init__(self, initial_seconds: float, max_seconds: float) -> None:
        self.initial_seconds = initial_seconds
        self.max_seconds = max(initial_seconds, max_seconds)
        self._next_seconds = initial_seconds

    def next(self) -> float:
        delay = self._next_seconds
        self._next_seconds = min(self.max_seconds, self._next_seconds * 2)
        return delay * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not security

    def reset(self) -> None:
        self._next_seconds = self.initial_seconds
