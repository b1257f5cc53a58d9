"""What relay process tests look at: the files written, the relay's totals line, its exit,
its memory, and the emulator's metrics."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from tests.helpers.emulator import metric, scrape
from tests.helpers.harness import LoggedProcess

_METRICS = re.compile(r"listening tap=\S+ metrics=(?P<metrics>\S+)")


def pb_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.endswith(".pb")}


async def wait_until(predicate: Callable[[], bool], within_seconds: float = 20.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_seconds
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def stopped(process: LoggedProcess, signum: int | None = None, within: float = 30) -> int:
    """Send `signum` (if any) and wait for the exit status."""
    if signum is not None:
        process.process.send_signal(signum)
    return await asyncio.to_thread(process.process.wait, within)


async def line(process: LoggedProcess, pattern: str, within: float = 20.0) -> str:
    """The first log line matching `pattern`; fails if the process exits or time runs out."""
    match = await asyncio.to_thread(process.wait_for_line, pattern, within)
    return match.string


def line_index(process: LoggedProcess, pattern: str) -> int:
    return next(i for i, text in enumerate(process.lines) if re.search(pattern, text))


def totals(relay: LoggedProcess) -> dict[str, str]:
    """The relay's `relay stopped ...` line as a dict of its counters."""
    text = next(text for text in relay.lines if "relay stopped" in text)
    return dict(re.findall(r"(\w+)=([^\s()]+)", text))


def memory_kib(pid: int, field: str = "VmHWM") -> int:
    """A process's resident memory from /proc (VmHWM: the peak so far; VmRSS: now)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def metrics_url(emulator: LoggedProcess) -> str:
    match = _METRICS.search(emulator.log)
    assert match, emulator.log
    return f"http://{match['metrics']}"


def queue_items(emulator: LoggedProcess) -> float:
    """The emulator's `tap_emulator_queue_items`: files accepted and not yet published."""
    return metric(scrape(metrics_url(emulator)), "tap_emulator_queue_items")
