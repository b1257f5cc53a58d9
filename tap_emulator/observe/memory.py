"""Observe: gives memory back to the system after a burst of large messages, where the C
allocator allows it (glibc; elsewhere these calls do nothing).

Two habits of glibc's malloc kept a burst's memory resident long after its messages were
written. Each time a block it had mapped for itself is freed, it raises its mmap threshold to
that block's size (up to 32 MiB), so after the first large message every later buffer of a
message (grpc's copy, the bytes, the decoded message, the file's payload) comes from a heap,
and a heap gives back only what is free at its very top. Fixing the threshold
(`M_MMAP_THRESHOLD`, which also turns the adjustment off) keeps every large block mapped on
its own, returned the moment it is freed; `malloc_trim(0)`, called in a thread once resident
memory has grown, returns the free pages inside the heaps (small allocations of grpc and
Python), which nothing else would.

Measured with 20 streams x 2 x 8 MiB against stalled writers (tests/integration/
test_reliability_memory.py): resident once the burst is written 350-410 -> 85-175 MiB (a
baseline of 50 MiB), peak 480-505 -> 440-460 MiB. The cost: each block of 1 MiB or more is
fresh pages from the kernel (a large message's buffers), never a reused heap block.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
# Blocks this large or larger are mapped on their own: every message buffer worth returning,
# and nothing of the many small allocations a normal message costs.
LARGE_BLOCK_BYTES = 1024 * 1024
# Resident memory must have grown this much since the last trim before trimming again.
TRIM_AFTER_GROWTH_BYTES = 32 * 1024 * 1024
TRIM_PERIOD_SECONDS = 10.0


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl, say): nothing to tune
    return libc


_LIBC = _glibc()


def tune_allocator(large_block_bytes: int = LARGE_BLOCK_BYTES) -> bool:
    """Map every block of `large_block_bytes` or more on its own (see the module docstring);
    call once, early. Returns whether the allocator took the setting."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, large_block_bytes))


def resident_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> int:
    """Return free heap pages to the system; returns how many bytes resident memory fell."""
    if _LIBC is None:
        return 0
    before = resident_bytes()
    _LIBC.malloc_trim(0)
    return max(0, before - resident_bytes())


class MemoryReturner:
    """Trims the heaps in a thread, every `period_seconds`, once resident memory has grown by
    `growth_bytes` since the last trim: after a burst, not on every tick of steady load."""

    def __init__(
        self,
        period_seconds: float = TRIM_PERIOD_SECONDS,
        growth_bytes: int = TRIM_AFTER_GROWTH_BYTES,
        resident: Callable[[], int] = resident_bytes,
    ) -> None:
        self._period = period_seconds
        self._growth = growth_bytes
        self._resident = resident
        self._after_last_trim = resident()

    def trim_if_grown(self) -> int:
        """Trim if resident memory grew enough since the last trim; returns the bytes given
        back. Blocking: run it in a thread."""
        if self._resident() - self._after_last_trim < self._growth:
            return 0
        returned = trim()
        self._after_last_trim = self._resident()
        return returned

    async def run(self) -> None:
        """Run until cancelled."""
        if _LIBC is None:
            return
        while True:
            await asyncio.sleep(self._period)
            returned = await asyncio.to_thread(self.trim_if_grown)
            if returned:
                log.debug("returned %d MiB to the system", returned >> 20)
