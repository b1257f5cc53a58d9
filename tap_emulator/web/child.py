"""The web page's process: `python -m tap_emulator.web.child --fd N ...`, started by the
emulator (`tap_emulator.web.link`), never by hand. Reads the frames the emulator sends on
socket N into the live page, tells the emulator where the page listens (or why it cannot),
and stops when the emulator closes the socket. Runs at `nice` 10, so the kernel serves the
emulator first."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from tap_emulator.netaddr import split_address
from tap_emulator.observe.logs import configure_logging
from tap_emulator.web.link import FILE_HEAD, FRAME_HEAD, PAGE_NICENESS
from tap_emulator.web.live import LivePage


def _tell(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")


async def _follow(reader: asyncio.StreamReader, page: LivePage) -> None:
    """Frames until the emulator closes the socket."""
    head_size, file_head_size = FRAME_HEAD.size, FILE_HEAD.size
    while True:
        try:
            kind, length = FRAME_HEAD.unpack(await reader.readexactly(head_size))
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return
        if kind == b"F":
            published_at, sequence, stem_bytes = FILE_HEAD.unpack_from(body)
            stem_end = file_head_size + stem_bytes
            stem = body[file_head_size:stem_end].decode()
            page.feed.offer(stem, sequence, body[stem_end:], published_at)
        elif kind == b"S":
            page.status.update(json.loads(body))


async def serve(args: argparse.Namespace) -> int:
    connection = socket.socket(fileno=args.fd)
    reader, writer = await asyncio.open_connection(sock=connection, limit=1 << 20)
    page = LivePage(
        args.output_dir, args.max_transactions, lambda count: _tell(writer, {"pages": count})
    )
    try:
        address = await page.start(*split_address(args.listen))
    except OSError as exc:
        _tell(writer, {"error": f"cannot listen on {args.listen} (ui_listen): {exc.strerror}"})
        await writer.drain()
        return 2
    _tell(writer, {"ready": list(address)})
    try:
        await _follow(reader, page)
    finally:
        await page.close()
        writer.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--max-transactions", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args()
    with contextlib.suppress(OSError):
        os.nice(PAGE_NICENESS)
    # The emulator blocks these in every thread (its signal thread takes them) and the mask
    # is inherited: Ctrl-C, sent to the whole group, is for the emulator, which closes our
    # socket when it is done; a SIGTERM sent to us alone ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    configure_logging(args.log_level, args.log_format)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        runner = asyncio.Runner()
    with runner:
        return runner.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
