"""Side-by-side measurement of the asyncio gRPC server transports for tap-emulator.

For each server variant (grpc.aio and grpclib, each on asyncio's default loop and on
uvloop) this runs, in one go and interleaved (repeat r: every scenario, every variant):

- receive-only throughput with ~1.5 KB messages, the same with ``--parse``, and with
  64 KiB messages: messages/s and MB/s taken off the streams over a fixed window, server
  CPU seconds per 10k messages, and server peak RSS (VmHWM);
- a stalled-handler memory test: 40 streams push 1 MiB messages while every handler stops
  reading after its first message, with the streams on 2 shared connections and on 40
  connections; it reports server RSS and how many bytes the clients' writes got through;
- an oversize check: one 20 MiB message against the 16 MiB limit.

Clients are separate processes (``loadgen.py``, grpcio's asyncio client, raw bytes), so
they never share the server's event loop; servers and clients share the machine's cores.
Results go to ``benchmarks/results/transport.json`` and a Markdown summary to stdout.

    python benchmarks/transport/run_transport.py --seconds 10 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "transport.json"
PACKAGES = ("grpcio", "grpclib", "h2", "uvloop", "protobuf", "xds-protos")

STARTUP_TIMEOUT_S = 30.0
LINE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MIB = 1024 * 1024
OVERSIZE_BYTES = 20 * MIB

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Variant:
    """One server configuration: a script and its flags."""

    name: str
    script: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    """One throughput measurement: payload kind, parsing, and who takes part."""

    name: str
    kind: str
    parse: bool
    variants: tuple[Variant, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """How the load generator spreads its streams: processes x connections x streams."""

    name: str
    processes: int
    connections_per_process: int
    streams_per_process: int

    @property
    def streams(self) -> int:
        """Streams over all processes."""
        return self.processes * self.streams_per_process


GRPC_AIO = Variant("grpc.aio", "server_grpc_aio.py")
GRPC_AIO_UVLOOP = Variant("grpc.aio+uvloop", "server_grpc_aio.py", ("--loop", "uvloop"))
GRPCLIB = Variant("grpclib", "server_grpclib.py")
GRPCLIB_UVLOOP = Variant("grpclib+uvloop", "server_grpclib.py", ("--loop", "uvloop"))
GRPC_AIO_BDP = Variant("grpc.aio bdp_probe on", "server_grpc_aio.py", ("--bdp-probe", "on"))
MAIN_VARIANTS = (GRPC_AIO, GRPC_AIO_UVLOOP, GRPCLIB, GRPCLIB_UVLOOP)
STALL_VARIANTS = (GRPC_AIO_BDP, *MAIN_VARIANTS)

SCENARIOS = (
    Scenario("1.5 KB", "small", parse=False, variants=MAIN_VARIANTS),
    Scenario("1.5 KB + parse", "small", parse=True, variants=MAIN_VARIANTS),
    Scenario("64 KiB", "large", parse=False, variants=(*MAIN_VARIANTS, GRPC_AIO_BDP)),
)
THROUGHPUT_LAYOUT = Layout("2 processes x 1 connection x 4 streams", 2, 1, 4)
STALL_LAYOUTS = (
    Layout("40 streams on 2 connections", 2, 1, 20),
    Layout("40 streams on 40 connections", 2, 20, 20),
)


class Process:
    """A child process speaking JSON lines on stdout; killed if still alive on close."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        """Wrap ``proc`` and start collecting its lines."""
        self.proc = proc
        self.label = label
        self._lines: asyncio.Queue[Json | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, script: str, *args: str) -> Process:
        """Start ``python <script> <args>`` from this directory."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / script),
            *args,
            cwd=HERE,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc, f"{script} {' '.join(args)}")

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._lines.put_nowait(json.loads(raw))
        self._lines.put_nowait(None)

    async def expect(self, event: str, timeout: float = LINE_TIMEOUT_S) -> Json:
        """The next line whose ``event`` is ``event``."""
        async with asyncio.timeout(timeout):
            while True:
                line = await self._lines.get()
                if line is None:
                    raise RuntimeError(f"{self.label}: exited before {event!r}")
                if line.get("event") == event:
                    return line

    def signal(self, signum: int) -> None:
        """Send a signal if the child still runs."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    async def close(self) -> None:
        """Wait for the child to end; kill it if it overstays."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self.proc.wait()
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Server(Process):
    """A benchmark server: knows its port and answers snapshots."""

    port: int
    idle: Json

    @classmethod
    async def launch(cls, variant: Variant, *extra: str) -> Server:
        """Start a server of ``variant`` on a free port and wait until it listens."""
        base = await Process.start(variant.script, "--port", "0", *variant.flags, *extra)
        server = cls(base.proc, base.label)
        base._reader.cancel()  # the new wrapper reads from here on
        with contextlib.suppress(asyncio.CancelledError):
            await base._reader
        try:
            listening = await server.expect("listening", STARTUP_TIMEOUT_S)
        except BaseException:
            server.signal(signal.SIGKILL)
            await server.close()
            raise
        server.port = int(listening["port"])
        server.idle = memory(server.pid)
        return server

    async def snapshot(self) -> Json:
        """Counters, CPU and memory now."""
        self.signal(signal.SIGUSR1)
        return await self.expect("snapshot")

    async def stop(self) -> Json:
        """SIGTERM; the final counters."""
        self.signal(signal.SIGTERM)
        try:
            return await self.expect("exit", STOP_TIMEOUT_S)
        finally:
            await self.close()


def memory(pid: int) -> Json:
    """VmRSS and VmHWM of ``pid`` in MB (10^6 bytes)."""
    found = {"rss_mb": 0.0, "hwm_mb": 0.0}
    keys = {"VmRSS:": "rss_mb", "VmHWM:": "hwm_mb"}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition("\t")
            if key in keys:
                found[keys[key]] = round(int(rest.split()[0]) * 1024 / 1e6, 1)
    return found


async def start_clients(port: int, layout: Layout, *args: str) -> list[Process]:
    """Start the load-generator processes of ``layout``."""
    return [
        await Process.start(
            "loadgen.py",
            "--port",
            str(port),
            "--connections",
            str(layout.connections_per_process),
            "--streams",
            str(layout.streams_per_process),
            *args,
        )
        for _ in range(layout.processes)
    ]


async def finish_clients(clients: list[Process], timeout: float) -> Json:
    """Collect every client's ``done`` line and add them up."""
    writes = pushed = 0
    statuses: dict[str, int] = {}
    details: dict[str, int] = {}
    for client in clients:
        done = await client.expect("done", timeout)
        writes += done["writes"]
        pushed += done["bytes"]
        for name, count in done["statuses"].items():
            statuses[name] = statuses.get(name, 0) + count
        for text, count in done["details"].items():
            details[text] = details.get(text, 0) + count
        await client.close()
    return {"writes": writes, "bytes": pushed, "statuses": statuses, "details": details}


async def kill_all(processes: list[Process]) -> None:
    """Make sure nothing we started outlives a failed measurement."""
    for process in processes:
        process.signal(signal.SIGKILL)
        await process.close()


async def measure_throughput(
    variant: Variant, scenario: Scenario, seconds: float, warmup: float
) -> Json:
    """Messages and bytes taken off the streams over ``seconds``, after ``warmup``."""
    server = await Server.launch(variant, *(("--parse",) if scenario.parse else ()))
    clients: list[Process] = []
    try:
        duration = warmup + seconds + 1.0
        clients = await start_clients(
            server.port,
            THROUGHPUT_LAYOUT,
            "--kind",
            scenario.kind,
            "--seconds",
            str(duration),
        )
        for client in clients:
            await client.expect("streaming", STARTUP_TIMEOUT_S)
        await asyncio.sleep(warmup)
        before = await server.snapshot()
        await asyncio.sleep(seconds)
        after = await server.snapshot()
        sent = await finish_clients(clients, duration + STOP_TIMEOUT_S)
        final = await server.stop()
    except BaseException:
        await kill_all([server, *clients])
        raise
    elapsed = after["t"] - before["t"]
    messages = after["messages"] - before["messages"]
    cpu = after["cpu_s"] - before["cpu_s"]
    return {
        "window_s": round(elapsed, 3),
        "messages": messages,
        "messages_per_s": round(messages / elapsed, 1),
        "mb_per_s": round((after["bytes"] - before["bytes"]) / elapsed / 1e6, 2),
        "server_cpu_share": round(cpu / elapsed, 3),
        "server_cpu_s_per_10k_messages": round(cpu / messages * 1e4, 4) if messages else None,
        "server_peak_rss_mb": round(final["hwm_kib"] * 1024 / 1e6, 1),
        "server_idle_rss_mb": server.idle["rss_mb"],
        "client_statuses": sent["statuses"],
    }


async def measure_stall(variant: Variant, layout: Layout, seconds: float) -> Json:
    """Server memory while every handler has stopped reading and clients keep pushing."""
    server = await Server.launch(variant, "--stall")
    clients: list[Process] = []
    try:
        clients = await start_clients(
            server.port,
            layout,
            "--kind",
            "mib",
            "--variety",
            "2",
            "--seconds",
            str(seconds),
            "--open-timeout",
            "0",
        )
        peak_rss = 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak_rss = max(peak_rss, memory(server.pid)["rss_mb"])
            await asyncio.sleep(0.2)
        at_end = memory(server.pid)
        sent = await finish_clients(clients, seconds + STOP_TIMEOUT_S)
        final = await server.stop()
    except BaseException:
        await kill_all([server, *clients])
        raise
    return {
        "streams": layout.streams,
        "connections": layout.processes * layout.connections_per_process,
        "seconds": seconds,
        "server_idle_rss_mb": server.idle["rss_mb"],
        "server_rss_mb_at_end": at_end["rss_mb"],
        "server_peak_rss_mb": max(peak_rss, at_end["hwm_mb"]),
        "client_writes_completed": sent["writes"],
        "client_bytes_pushed_mib": round(sent["bytes"] / MIB, 1),
        "server_messages_read": final["messages"],
        "server_streams_opened": final["streams_opened"],
    }


async def measure_oversize(variant: Variant) -> Json:
    """Send one 20 MiB message: does the server refuse it (16 MiB limit) or take it?"""
    server = await Server.launch(variant)
    clients: list[Process] = []
    try:
        clients = [
            await Process.start(
                "loadgen.py", "--port", str(server.port), "--oversize", str(OVERSIZE_BYTES)
            )
        ]
        sent = await finish_clients(clients, STOP_TIMEOUT_S + 10)
        final = await server.stop()
    except BaseException:
        await kill_all([server, *clients])
        raise
    return {
        "message_bytes": OVERSIZE_BYTES,
        "client_status": next(iter(sent["statuses"]), "NONE"),
        "client_details": next(iter(sent["details"]), ""),
        "server_messages_read": final["messages"],
        "server_largest_accepted_bytes": max(0, final["bytes"] - 1709)
        if final["messages"] > 1
        else 0,
        "server_peak_rss_mb": round(final["hwm_kib"] * 1024 / 1e6, 1),
    }


def machine() -> Json:
    """What ran the benchmark."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "memory_mb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e6),
        "packages": versions,
    }


def summarize(runs: list[Json]) -> Json:
    """Medians of the rates, the maximum of peak RSS, over the repeats."""

    def median(key: str) -> float | None:
        values = [run[key] for run in runs if run[key] is not None]
        return round(statistics.median(values), 4) if values else None

    return {
        "messages_per_s": median("messages_per_s"),
        "mb_per_s": median("mb_per_s"),
        "server_cpu_s_per_10k_messages": median("server_cpu_s_per_10k_messages"),
        "server_cpu_share": median("server_cpu_share"),
        "server_peak_rss_mb": max(run["server_peak_rss_mb"] for run in runs),
        "repeats": len(runs),
        "runs": runs,
    }


def log(text: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> Json:
    """Every measurement, interleaved, into one results document."""
    started = time.monotonic()
    throughput: dict[str, dict[str, list[Json]]] = {s.name: {} for s in SCENARIOS}
    for repeat in range(1, args.repeat + 1):
        for scenario in SCENARIOS:
            for variant in scenario.variants:
                log(f"throughput {scenario.name} {variant.name} (repeat {repeat})")
                result = await measure_throughput(variant, scenario, args.seconds, args.warmup)
                log(f"  {result['messages_per_s']:.0f} msg/s {result['mb_per_s']} MB/s")
                throughput[scenario.name].setdefault(variant.name, []).append(result)
    stall: dict[str, dict[str, Json]] = {layout.name: {} for layout in STALL_LAYOUTS}
    for layout in STALL_LAYOUTS:
        for variant in STALL_VARIANTS:
            log(f"stall {layout.name} {variant.name}")
            result = await measure_stall(variant, layout, args.stall_seconds)
            log(f"  peak RSS {result['server_peak_rss_mb']} MB, pushed "
                f"{result['client_bytes_pushed_mib']} MiB")
            stall[layout.name][variant.name] = result
    oversize = {}
    for variant in (GRPC_AIO, GRPCLIB):
        log(f"oversize {variant.name}")
        oversize[variant.name] = await measure_oversize(variant)
    return {
        "benchmark": "transport",
        "command": " ".join(
            ["python", "benchmarks/transport/run_transport.py", *sys.argv[1:]]
        ),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "method": {
            "throughput_layout": THROUGHPUT_LAYOUT.name,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "stall_seconds": args.stall_seconds,
            "stall_message_bytes": MIB,
            "client": "grpcio asyncio client, raw bytes, separate processes",
            "grpc_aio_options": {
                "grpc.http2.bdp_probe": "0 (except the 'bdp_probe on' variant)",
                "grpc.max_receive_message_length": 16 * MIB,
            },
            "grpclib_config": "defaults (4 MiB stream and connection windows)",
        },
        "throughput": {
            scenario: {name: summarize(runs) for name, runs in by_variant.items()}
            for scenario, by_variant in throughput.items()
        },
        "stall": stall,
        "oversize": oversize,
        "duration_s": round(time.monotonic() - started, 1),
    }


def markdown(results: Json) -> str:
    """The tables of the report."""
    lines = [
        "| scenario | variant | msg/s | MB/s | CPU s / 10k msg | server CPU share | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, by_variant in results["throughput"].items():
        for name, row in by_variant.items():
            lines.append(
                f"| {scenario} | {name} | {row['messages_per_s']:,.0f} | {row['mb_per_s']:.1f}"
                f" | {row['server_cpu_s_per_10k_messages']:.3f}"
                f" | {row['server_cpu_share']:.2f} | {row['server_peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "| stall layout | variant | idle RSS MB | RSS at end MB | peak RSS MB"
        " | client writes done | pushed MiB | server read |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for layout, by_variant in results["stall"].items():
        for name, row in by_variant.items():
            lines.append(
                f"| {layout} | {name} | {row['server_idle_rss_mb']:.0f}"
                f" | {row['server_rss_mb_at_end']:.0f} | {row['server_peak_rss_mb']:.0f}"
                f" | {row['client_writes_completed']} | {row['client_bytes_pushed_mib']:,.0f}"
                f" | {row['server_messages_read']} |"
            )
    lines += [
        "",
        "| oversize (20 MiB message) | client status | server messages read | peak RSS MB |",
        "|---|---|---:|---:|",
    ]
    for name, row in results["oversize"].items():
        lines.append(
            f"| {name} | {row['client_status']} | {row['server_messages_read']}"
            f" | {row['server_peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse the command line, measure, write the JSON, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument(
        "--stall-seconds", type=float, default=8.0, help="duration of each stall test"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.json} in {results['duration_s']} s")
    print(markdown(results))


if __name__ == "__main__":
    main()
