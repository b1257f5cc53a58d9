"""SIGTERM and SIGINT taken by a thread of their own, so that the drain's deadline and the
second signal hold whatever the event loop is doing."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("tap_emulator")


class SignalWatch:
    """SIGTERM and SIGINT, taken by a thread of their own with `sigwait`.

    The signals are blocked in every thread (before any is started) and waited for here, so
    they are seen at once whatever the event loop is doing. The first asks the server to drain
    (through the loop); if the process is still running `drain_timeout + margin` later (the
    loop stuck, a writer stuck in the kernel), it logs how many accepted files were not
    written and exits 1. A second signal exits 1 at once, with the same count."""

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

    def __init__(self, deadline_seconds: float) -> None:
        self._deadline_seconds = deadline_seconds
        self._unpublished: Callable[[], int] = lambda: 0
        self._on_first: Callable[[int], None] | None = None
        self._thread = threading.Thread(target=self._run, name="tap-signals", daemon=True)

    @classmethod
    def block_signals(cls) -> None:
        """Call in the main thread before any other thread exists: threads inherit the mask."""
        signal.pthread_sigmask(signal.SIG_BLOCK, cls.SIGNALS)

    def start(self, on_first: Callable[[int], None], unpublished: Callable[[], int]) -> None:
        self._on_first = on_first
        self._unpublished = unpublished
        self._thread.start()

    def _run(self) -> None:
        first = signal.sigwait(self.SIGNALS)
        log.info("%s received", signal.Signals(first).name)
        assert self._on_first is not None
        self._on_first(first)
        second = signal.sigtimedwait(self.SIGNALS, self._deadline_seconds)
        if second is None:
            self._exit(f"the drain did not end {self._deadline_seconds:.0f}s after {_name(first)}")
        else:
            self._exit(f"second {_name(second.si_signo)}")

    def _exit(self, why: str) -> None:
        log.error("%s: exiting now with %d accepted files not written", why, self._unpublished())
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(1)


def _name(signum: int) -> str:
    return signal.Signals(signum).name
