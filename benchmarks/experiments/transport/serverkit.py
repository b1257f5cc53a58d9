"""What the receive-only benchmark servers share: counters, reports, flags and loop choice.

A benchmark server binds loopback, counts the messages and bytes its handler takes off the
``StreamTaps`` streams, and does nothing else with them. It talks to the runner through
stdout, one JSON object per line:

- ``{"event": "listening", "port": ..., "pid": ...}`` once it accepts connections;
- ``{"event": "snapshot", ...}`` whenever it receives ``SIGUSR1``;
- ``{"event": "exit", ...}`` when it stops (``SIGTERM``, ``SIGINT`` or ``--lifetime``).

Snapshots carry the counters, the process's own CPU seconds (all threads, from
``getrusage``), VmRSS and VmHWM, so the runner can take rates over a window it chooses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SERVICE = "envoy.service.tap.v3.TapSinkService"
METHOD = "StreamTaps"
PATH = f"/{SERVICE}/{METHOD}"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Counters:
    """What the handlers saw: plain integers, only touched from the event loop."""

    messages: int = 0
    bytes: int = 0
    streams_opened: int = 0
    streams_closed: int = 0


def proc_memory_kib(pid: int | str = "self") -> dict[str, int]:
    """Read VmRSS and VmHWM of a process in KiB from ``/proc/<pid>/status`` (0 if gone)."""
    wanted = {"VmRSS:": "rss_kib", "VmHWM:": "hwm_kib"}
    found = dict.fromkeys(wanted.values(), 0)
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            key, _, rest = line.partition("\t")
            if key in wanted:
                found[wanted[key]] = int(rest.split()[0])
    return found


def snapshot(counters: Counters) -> dict[str, Any]:
    """Take the counters plus this process's CPU seconds and memory, at one instant."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **asdict(counters),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "t": time.monotonic(),
        **proc_memory_kib(),
    }


def emit(event: str, **fields: object) -> None:
    """Write one JSON line to stdout for the runner."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def argument_parser(description: str) -> argparse.ArgumentParser:
    """Build a parser with the flags every benchmark server takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop"
    )
    parser.add_argument(
        "--parse",
        action="store_true",
        help="run StreamTapsRequest.FromString on every message",
    )
    parser.add_argument(
        "--stall",
        action="store_true",
        help="handlers stop reading after the first message of each stream",
    )
    parser.add_argument(
        "--lifetime",
        type=float,
        default=300.0,
        help="exit by itself after this many seconds",
    )
    return parser


def message_parser(enabled: bool) -> Callable[[bytes], object] | None:
    """Return ``StreamTapsRequest.FromString`` when parsing is on, else None.

    xds-protos is imported only here, and only when asked for.
    """
    if not enabled:
        return None
    from envoy.service.tap.v3 import tap_pb2  # type: ignore[import-untyped]

    parse: Callable[[bytes], object] = tap_pb2.StreamTapsRequest.FromString
    return parse


async def stall_forever() -> None:
    """Wait until cancelled: what a stalled handler does after its first message."""
    await asyncio.Event().wait()


async def serve_until_stopped(counters: Counters, lifetime: float) -> None:
    """Answer ``SIGUSR1`` with a snapshot; return on ``SIGTERM``/``SIGINT`` or lifetime."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: emit("snapshot", **snapshot(counters)))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=lifetime)
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


def run(main: Callable[[], Coroutine[Any, Any, None]], loop_name: str) -> None:
    """Run ``main`` on the chosen event loop."""
    if loop_name == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def announce_listening(port: int, *, transport: str, args: argparse.Namespace) -> None:
    """Tell the runner the server accepts connections, and how it is configured."""
    emit(
        "listening",
        host=HOST,
        port=port,
        pid=os.getpid(),
        transport=transport,
        loop=args.loop,
        parse=args.parse,
        stall=args.stall,
    )
