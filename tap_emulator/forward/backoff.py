"""Forward, backoff: how long a sender's stream waits before it is opened again."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff with jitter (so the streams of many senders that failed
    together do not all come back at once); `reset` after a stream carried a trace."""

    def __init__(self, initial_seconds: float, maximum_seconds: float) -> None:
        self.initial_seconds = initial_seconds
        self.maximum_seconds = max(initial_seconds, maximum_seconds)
        self._next_seconds = initial_seconds

    def next(self) -> float:
        delay = self._next_seconds
        self._next_seconds = min(self.maximum_seconds, delay * 2)
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    def reset(self) -> None:
        self._next_seconds = self.initial_seconds
