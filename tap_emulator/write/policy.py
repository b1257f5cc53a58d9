"""Write: the choices an operator makes about the writers (settings; no machinery here)."""

from __future__ import annotations

from enum import StrEnum


class WriteErrorPolicy(StrEnum):
    """What a writer does with a file it cannot publish because the disk fails."""

    BLOCK = "block"  # retry with backoff until it works; the queue fills, senders wait
    DROP = "drop"  # give the file up, count it, and go on with the next


class WriterMode(StrEnum):
    """Where files are published: `auto` on the event loop when the directory is memory-backed
    (tmpfs), in writer threads otherwise; `thread` always in writer threads."""

    AUTO = "auto"
    THREAD = "thread"
