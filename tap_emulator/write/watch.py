"""Write: keeps an eye on the output directory from a thread of its own.

Once a second it tries to create a file nobody sees (publisher.probe) in its own thread, never
on the event loop: a frozen or stalled file system then makes the probe wait, not the server,
and a probe waiting longer than `stuck_after_seconds` is itself the answer ("not responding").
Every `sweep_every_seconds` it also removes temporaries that a dead process left behind. What
it found is read by readiness at no cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from tap_emulator.write.publisher import STALE_TEMPORARY_SECONDS, Publisher

log = logging.getLogger(__name__)


class OutputWatch:
    """The output directory's last known health, refreshed in the background."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        period_seconds: float = 1.0,
        stuck_after_seconds: float = 5.0,
        sweep_every_seconds: float = STALE_TEMPORARY_SECONDS,
    ) -> None:
        self._publisher = publisher
        self._period = period_seconds
        self._stuck_after = stuck_after_seconds
        self._sweep_every = sweep_every_seconds
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tap-output-watch")
        self._task: asyncio.Task[None] | None = None
        self._last_problem: str | None = None
        self._waiting_since: float | None = None

    def problem(self) -> str | None:
        """Why the directory cannot take a file now, as of the last probe, or None."""
        waiting_since = self._waiting_since
        if waiting_since is not None:
            waited = time.monotonic() - waiting_since
            if waited >= self._stuck_after:
                return f"not responding: a probe has waited {waited:.0f}s"
        return self._last_problem

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tap-output-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # A probe stuck in the kernel cannot be interrupted; do not wait for it.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = time.monotonic() + self._sweep_every
        while True:
            self._waiting_since = time.monotonic()
            try:
                self._last_problem = await loop.run_in_executor(
                    self._executor, self._publisher.probe
                )
            finally:
                self._waiting_since = None
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self._sweep_every
                try:
                    swept = await loop.run_in_executor(self._executor, self._publisher.sweep)
                except OSError as exc:
                    log.warning("could not sweep stale temporaries: %s", exc.strerror)
                else:
                    if swept.removed:
                        log.info("removed %d stale temporary files", swept.removed)
            await asyncio.sleep(self._period)
