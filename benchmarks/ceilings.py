"""The two ceilings that bound the emulator on this machine, as benchmark processes.

``receive``: the product's gRPC transport (grpc.aio on uvloop, the server as ``serve``
makes it with ``tap_emulator.app.grpc_server_options``), with a raw-bytes
``StreamTaps`` handler that only counts messages and bytes: no parse, no naming, no write.
The runner drives it with the same load generators as the emulator.

``write``: the product's write queue, publisher and ``WriterPool`` built from the default
settings as ``serve`` builds them (``app.build``) on uvloop, fed by one coroutine
with the same file payloads as the load's mix (the templates' expected files), with no
gRPC in front. The producer yields to the loop every
``YIELD_EVERY`` files (a stream handler yields on every read) and otherwise waits only when
the queue is full.

Both answer ``SIGUSR1`` with a JSON snapshot line on stdout (counters, own CPU seconds,
VmRSS, VmHWM) and stop on ``SIGTERM``; ``write`` also stops after ``--seconds``, drains,
checks that the directory holds exactly the files it published, and prints a final line.

    python benchmarks/ceilings.py receive
    python benchmarks/ceilings.py write --dir /dev/shm/x --seconds 8
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
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

YIELD_EVERY = 16


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    found = {"rss_kib": 0, "hwm_kib": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found["rss_kib"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                found["hwm_kib"] = int(line.split()[1])
    return found


def own_usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "t": time.monotonic(), **memory_kib()}


def run_on_uvloop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop, as `tap_emulator.app.run` does."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# --- receive-only -----------------------------------------------------------------------


async def receive_only(args: argparse.Namespace) -> None:
    import grpc

    from tap_emulator.app import grpc_server_options
    from tap_emulator.config import Settings
    from tap_emulator.ingest.tapsink import METHOD, SERVICE

    counters = {"messages": 0, "bytes": 0, "streams": 0}

    async def stream_taps(
        requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        counters["streams"] += 1
        async for raw in requests:
            counters["messages"] += 1
            counters["bytes"] += len(raw)
        return b""

    settings = Settings()
    server = grpc.aio.server(options=grpc_server_options(settings))  # as `serve` makes it
    handler = grpc.stream_unary_rpc_method_handler(stream_taps)
    generic = grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})
    server.add_generic_rpc_handlers([generic])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: emit("snapshot", **counters, **own_usage()))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    emit("listening", port=port, pid=os.getpid())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.lifetime)
    await server.stop(grace=1.0)
    emit("exit", **counters, **own_usage())


# --- write-only -------------------------------------------------------------------------


def count_files(directory: Path) -> int:
    """Published files (ours end in .pb) in a directory."""
    return sum(1 for path in directory.iterdir() if path.name.endswith(".pb"))


async def write_only(args: argparse.Namespace) -> None:
    from load import payloads

    from tap_emulator import app
    from tap_emulator.config import Settings
    from tap_emulator.write.queue import Publication

    catalog = payloads.build_catalog(
        payloads.Mix.parse(args.kinds, args.bodies, args.redact_fraction, args.templates, args.seed)
    )
    files = [
        (payloads.expected_prefix(0, t), m.file_payload)
        for t in catalog.transactions
        for m in t.messages
    ]
    # The queue, publisher and pool exactly as `serve` wires them from the default settings,
    # so the ceiling follows the product; only the gRPC server in front is left out.
    settings = Settings(output_dir=Path(args.dir))
    emulator = app.build(settings)
    emulator.publisher.open()
    pool, queue = emulator.pool, emulator.queue
    await pool.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    produced = {"n": 0}
    loop.add_signal_handler(
        signal.SIGUSR1,
        lambda: emit("snapshot", messages=pool.published, produced=produced["n"], **own_usage()),
    )
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    emit(
        "listening",
        port=0,
        pid=os.getpid(),
        writers=settings.writers,
        writer_batch_max_items=settings.writer_batch_max_items,
        queue_max_items=settings.queue_max_items,
        queue_max_bytes=settings.queue_max_bytes,
        writer_mode=str(settings.writer_mode.value),
    )

    async def produce() -> None:
        count = len(files)
        n = 0
        while not stop.is_set():
            prefix, payload = files[n % count]
            group = [Publication(f"{prefix}-{n:032x}", 1, payload, time.monotonic())]
            if not queue.try_put(group):
                await queue.put(group)
            n += 1
            produced["n"] = n
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.seconds)
    stop.set()
    await producer
    unwritten = await pool.drain(60.0)
    published = pool.published
    await pool.close()
    on_disk = count_files(Path(args.dir))
    emit(
        "exit",
        messages=published,
        produced=produced["n"],
        unwritten=unwritten,
        files_on_disk=on_disk,
        **own_usage(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    modes = parser.add_subparsers(dest="mode", required=True)
    receive = modes.add_parser("receive", help="receive-only gRPC server")
    receive.add_argument("--lifetime", type=float, default=600.0)
    write = modes.add_parser("write", help="write-only WriterPool driver")
    write.add_argument("--dir", required=True)
    write.add_argument("--seconds", type=float, default=10.0)
    write.add_argument("--kinds", default="h1=0.4,h2=0.4,grpc=0.2")
    write.add_argument("--bodies", default="0=20,128=20,512=20,2048=20,8192=12,32768=5,65536=3")
    write.add_argument("--redact-fraction", type=float, default=0.05)
    write.add_argument("--templates", type=int, default=256)
    write.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    if args.mode == "receive":
        run_on_uvloop(lambda: receive_only(args))
    else:
        run_on_uvloop(lambda: write_only(args))


if __name__ == "__main__":
    main()
