"""The emulator's side of the web page: the page runs in a process of its own (at a lower
scheduling priority), and the writers hand it each published file over a socket, without
ever waiting for it.

Why a process: reading a file back into the page's index costs about as much CPU as taking
it in did (protobuf decoding and the capture reader's grouping, tens of microseconds). On the
server's event loop, or in a thread sharing its interpreter lock, that time is taken from
ingest, and under a CPU limit there is no telling idle time from time the loop was not given.
In a process of its own with `nice` 10, the kernel gives the emulator the CPU first; the
emulator pays for one published file only what it costs to copy its bytes into a socket.

The hand-off: `offer` (the writers' `on_published`, on the event loop) appends a frame;
frames go out in one write per loop iteration. The socket and its buffer hold at most
`MAX_BUFFER_BYTES` (with what is framed and not yet written); a file that would go past it
is skipped and counted, never waited for.
Once a second the emulator sends the numbers the page's header shows (the same as /metrics
exports), while a page is open. If the page's process ends, capture goes on without it, and
it is started again on the same address.

Frames (emulator -> page): kind (1 byte: F file, S status) and length (4 bytes, little
endian), then for F: the publication time (f64), the sequence (u64), the stem's length (u16),
the stem, the payload; for S: JSON. Messages (page -> emulator): JSON lines, `{"ready": [host,
port]}`, `{"error": text}`, `{"pages": n}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

log = logging.getLogger(__name__)

FRAME_HEAD = struct.Struct("<cI")
FILE_HEAD = struct.Struct("<dQH")
MAX_BUFFER_BYTES = 16 * 1024 * 1024
STATUS_SECONDS = 1.0
_START_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 5.0
_RESTART_FIRST_SECONDS = 1.0
_RESTART_MAX_SECONDS = 30.0
PAGE_NICENESS = 10


class Published(Protocol):
    """What the writers tell of a file they published (`write.queue.Publication`)."""

    stem: str
    sequence: int
    payload: bytes


class PageStartError(Exception):
    """The page's process could not start or listen; the message says why."""


def file_frame(stem: str, sequence: int, payload: bytes, published_at: float) -> list[bytes]:
    name = stem.encode()
    head = FILE_HEAD.pack(published_at, sequence, len(name))
    return [FRAME_HEAD.pack(b"F", len(head) + len(name) + len(payload)), head, name, payload]


def status_frame(status: dict[str, Any]) -> bytes:
    body = json.dumps(status, separators=(",", ":")).encode()
    return FRAME_HEAD.pack(b"S", len(body)) + body


class _Channel(asyncio.Protocol):
    """The socket to the page's process and its JSON-line messages (the write side's
    pressure is read from the transport's buffer size, see `PageProcess.offer`)."""

    def __init__(self, on_message: Callable[[dict[str, Any]], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self._on_message = on_message
        self._partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # The high mark only stops asyncio from calling pause_writing early: `offer` keeps the
        # buffer under MAX_BUFFER_BYTES itself.
        self.transport.set_write_buffer_limits(high=MAX_BUFFER_BYTES, low=MAX_BUFFER_BYTES // 2)

    def data_received(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict):
                    self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closed.set()


class PageProcess:
    """Starts the page's process, feeds it what the writers publish, stops it."""

    def __init__(
        self,
        output_dir: Path,
        max_transactions: int,
        status: Callable[[], dict[str, Any]],
        log_level: str = "info",
        log_format: str = "text",
    ) -> None:
        self.output_dir = output_dir
        self.max_transactions = max_transactions
        self._status = status
        self._log = (log_level, log_format)
        self._channel: _Channel | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._frames: list[bytes] = []
        self._frames_bytes = 0  # framed, not yet handed to the transport
        self._flush_asked = False
        self._ready: asyncio.Future[tuple[str, int]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pages = 0
        self.offered = 0
        self.skipped = 0  # files the page never got: its socket was full, or it was down
        self.restarts = 0  # times its process was started again after it ended

    # --- the writers' hook: constant time, never waits -----------------------------------

    def offer(self, publication: Published) -> None:
        self.offered += 1
        channel = self._channel
        transport = channel.transport if channel is not None else None
        # Bytes, not only the transport's pause: a batch of large files published in one loop
        # turn would otherwise all be framed before the first write, past the memory bound.
        if transport is None or (
            self._frames_bytes + transport.get_write_buffer_size() + len(publication.payload)
            > MAX_BUFFER_BYTES
        ):
            self.skipped += 1
            return
        frame = file_frame(publication.stem, publication.sequence, publication.payload, time.time())
        self._frames += frame
        self._frames_bytes += sum(map(len, frame))
        if not self._flush_asked:
            self._flush_asked = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_asked = False
        frames, self._frames, self._frames_bytes = self._frames, [], 0
        channel = self._channel
        if channel is not None and channel.transport is not None and frames:
            channel.transport.writelines(frames)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Start the process; returns the address its page listens on. From then on the
        process is started again, on that address, whenever it ends."""
        address = await self._spawn(host, port)
        self._tasks = [
            asyncio.create_task(self._send_status(), name="web-status"),
            asyncio.create_task(self._keep_running(address), name="web-process"),
        ]
        return address

    async def _spawn(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ready = loop.create_future()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tap_emulator.web.child",
                "--fd", str(theirs.fileno()),
                "--listen", _address(host, port),
                "--output-dir", str(self.output_dir),
                "--max-transactions", str(self.max_transactions),
                "--log-level", self._log[0],
                "--log-format", self._log[1],
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise PageStartError(
                f"cannot start the page's process ({sys.executable}): {exc.strerror}"
            ) from exc
        finally:
            theirs.close()
        _, self._channel = await loop.create_connection(lambda: _Channel(self._message), sock=ours)
        try:
            async with asyncio.timeout(_START_TIMEOUT_SECONDS):
                return await self._ready
        except (TimeoutError, PageStartError):
            await self._end_process()
            raise

    def _message(self, message: dict[str, Any]) -> None:
        ready = self._ready
        if "ready" in message and ready is not None and not ready.done():
            host, port = message["ready"]
            ready.set_result((str(host), int(port)))
        elif "error" in message and ready is not None and not ready.done():
            ready.set_exception(PageStartError(str(message["error"])))
        elif "pages" in message:
            self._pages = int(message["pages"])

    async def _send_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            channel = self._channel
            if self._pages and channel is not None and channel.transport is not None:
                status = self._status()
                status["handoff"] = {"offered": self.offered, "skipped": self.skipped}
                channel.transport.write(status_frame(status))

    async def _keep_running(self, address: tuple[str, int]) -> None:
        """Whenever the process ends, start it again on the same address (a page left open in
        a browser reconnects by itself), after a pause that doubles while starts keep failing
        or the process keeps dying young. Files published meanwhile are skipped and counted;
        capture never waits for this."""
        pause = _RESTART_FIRST_SECONDS
        while True:
            assert self._process is not None
            started = time.monotonic()
            status = await self._process.wait()
            self._channel = None
            if time.monotonic() - started > _RESTART_MAX_SECONDS:
                pause = _RESTART_FIRST_SECONDS  # it ran a good while: not a crash loop
            log.warning(
                "the web page's process ended (exit status %s): the page is down, capture "
                "goes on; starting it again in %.0fs",
                status,
                pause,
            )
            while True:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RESTART_MAX_SECONDS)
                try:
                    await self._spawn(*address)
                except (PageStartError, TimeoutError, OSError) as exc:
                    log.warning(
                        "the web page did not start again: %s; next try in %.0fs", exc, pause
                    )
                    continue
                self.restarts += 1
                log.info("the web page is back on %s", _address(*address))
                break

    async def _end_process(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and channel.transport is not None:
            channel.transport.close()  # end of input: the page's process stops by itself
        process = self._process
        if process is not None and process.returncode is None:
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_SECONDS):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._end_process()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
