"""Side-by-side measurement of the asyncio gRPC server transports for tap-emulator.

For each server variant (grpc.aio and grpclib, each on asyncio's default loop and on
uvloop) this runs, in one go and interleaved (repeat r: every scenario, every variant):

- receive-only throughput with ~1.6 KB messages, the same with ``--parse``, and with
  64 KiB messages: messages/s and MB/s taken off the streams over a fixed window, server
  CPU seconds per 10k messages, and server peak RSS (VmHWM);
- a stalled-handler memory test: 40 streams push 1 MiB messages while every handler stops
  reading after its first message, with the streams on 2 shared connections and on 40
  connections; it reports server RSS and how many bytes the clients' writes got through;
- an oversize check: one 20 MiB message against the 16 MiB limit.

Besides the four variants asked for, two grpc.aio option sets take part where they
matter: gRPC's defaults (``bdp_probe`` on) and a fixed 256 KiB stream window
(``grpc.http2.lookahead_bytes``) on top of ``bdp_probe=0``.

Clients are separate processes (``loadgen.py``, grpcio's asyncio client, raw bytes), so
they never share the server's event loop; servers and clients share the machine's cores.
Results go to ``benchmarks/results/transport.json`` and a Markdown summary to stdout.

    python benchmarks/experiments/transport/run_transport.py --seconds 10 --repeat 3
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Self

from serverkit import proc_memory_kib

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
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
GRPC_AIO_WINDOW = Variant(
    "grpc.aio window 256K",
    "server_grpc_aio.py",
    ("--option", f"grpc.http2.lookahead_bytes={256 * 1024}"),
)
GRPC_AIO_DEFAULTS = Variant("grpc.aio bdp_probe on", "server_grpc_aio.py", ("--bdp-probe", "on"))
GRPCLIB = Variant("grpclib", "server_grpclib.py")
GRPCLIB_UVLOOP = Variant("grpclib+uvloop", "server_grpclib.py", ("--loop", "uvloop"))
MAIN_VARIANTS = (GRPC_AIO, GRPC_AIO_UVLOOP, GRPCLIB, GRPCLIB_UVLOOP)

SCENARIOS = (
    Scenario("1.6 KB", "small", parse=False, variants=(*MAIN_VARIANTS, GRPC_AIO_WINDOW)),
    Scenario("1.6 KB + parse", "small", parse=True, variants=MAIN_VARIANTS),
    Scenario(
        "64 KiB",
        "large",
        parse=False,
        variants=(*MAIN_VARIANTS, GRPC_AIO_WINDOW, GRPC_AIO_DEFAULTS),
    ),
)
THROUGHPUT_LAYOUT = Layout("2 processes x 1 connection x 4 streams", 2, 1, 4)
#: Stall layouts, each with the variants it runs. The event loop does not change flow
#: control, so the uvloop variants run only where every stream has its own connection.
STALL_TESTS = (
    (
        Layout("40 streams on 40 connections", 2, 20, 20),
        (GRPC_AIO_DEFAULTS, *MAIN_VARIANTS, GRPC_AIO_WINDOW),
    ),
    (
        Layout("40 streams on 2 connections", 2, 1, 20),
        (GRPC_AIO_DEFAULTS, GRPC_AIO, GRPCLIB, GRPC_AIO_WINDOW),
    ),
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
    async def start(cls, script: str, *args: str) -> Self:
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

    async def expect(self, event: str, within: float = LINE_TIMEOUT_S) -> Json:
        """Return the next line whose ``event`` is ``event``."""
        async with asyncio.timeout(within):
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
    async def launch(cls, variant: Variant, *extra: str) -> Self:
        """Start a server of ``variant`` on a free port and wait until it listens."""
        server = await cls.start(variant.script, "--port", "0", *variant.flags, *extra)
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
        """Ask the server for its counters, CPU and memory now."""
        self.signal(signal.SIGUSR1)
        return await self.expect("snapshot")

    async def stop(self) -> Json:
        """Stop the server with SIGTERM and return its final counters."""
        self.signal(signal.SIGTERM)
        try:
            return await self.expect("exit", STOP_TIMEOUT_S)
        finally:
            await self.close()


def memory(pid: int) -> Json:
    """Read VmRSS and VmHWM of ``pid``, in MB (10^6 bytes)."""
    kib = proc_memory_kib(pid)
    return {"rss_mb": mb(kib["rss_kib"]), "hwm_mb": mb(kib["hwm_kib"])}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """Read a process's user + system CPU seconds from ``/proc/<pid>/stat`` (0 if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_busy_s() -> tuple[float, float]:
    """Read the busy CPU seconds of all cores since boot: (process time, interrupt time).

    Process time is user + nice + system + steal; interrupt time is irq + softirq, which
    the kernel charges to no process (loopback TCP does much of its work there).
    """
    line = Path("/proc/stat").read_text().split("\n")[0]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
    return (user + nice + system + steal) / CLOCK_TICKS, (irq + softirq) / CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class CpuMark:
    """CPU seconds at one instant: the whole machine and the load generators."""

    t: float
    machine_s: float
    interrupts_s: float
    clients_s: float

    @classmethod
    def take(cls, clients: list[Process]) -> CpuMark:
        """Read the marks now."""
        return cls(
            time.monotonic(),
            *machine_busy_s(),
            sum(process_cpu_s(client.pid) for client in clients),
        )


def loadavg() -> list[str]:
    """Read the 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


async def busy_cores(seconds: float) -> float:
    """Measure how many cores the machine keeps busy over ``seconds``."""
    before = sum(machine_busy_s())
    await asyncio.sleep(seconds)
    return (sum(machine_busy_s()) - before) / seconds


def mb(kib: int) -> float:
    """Convert KiB to MB (10^6 bytes), one decimal."""
    return round(kib * 1024 / 1e6, 1)


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


async def finish_clients(clients: list[Process], within: float) -> Json:
    """Collect every client's ``done`` line and add them up."""
    writes = pushed = 0
    statuses: dict[str, int] = {}
    details: dict[str, int] = {}
    for client in clients:
        done = await client.expect("done", within)
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
    """Measure messages and bytes taken off the streams over ``seconds``, after ``warmup``."""
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
        cpu_before = CpuMark.take(clients)
        await asyncio.sleep(seconds)
        after = await server.snapshot()
        cpu_after = CpuMark.take(clients)
        for client in clients:
            client.signal(signal.SIGTERM)  # stop now rather than at their own deadline
        sent = await finish_clients(clients, duration + STOP_TIMEOUT_S)
        final = await server.stop()
    except BaseException:
        await kill_all([server, *clients])
        raise
    elapsed = after["t"] - before["t"]
    messages = after["messages"] - before["messages"]
    cpu = after["cpu_s"] - before["cpu_s"]
    wall = cpu_after.t - cpu_before.t
    machine_share = (cpu_after.machine_s - cpu_before.machine_s) / wall
    interrupts_share = (cpu_after.interrupts_s - cpu_before.interrupts_s) / wall
    clients_share = (cpu_after.clients_s - cpu_before.clients_s) / wall
    return {
        "window_s": round(elapsed, 3),
        "messages": messages,
        "messages_per_s": round(messages / elapsed, 1),
        "mb_per_s": round((after["bytes"] - before["bytes"]) / elapsed / 1e6, 2),
        "server_cpu_share": round(cpu / elapsed, 3),
        "clients_cpu_share": round(clients_share, 3),
        "machine_process_share": round(machine_share, 3),
        "machine_interrupts_share": round(interrupts_share, 3),
        # Cores busy in processes other than this server and its clients: other work on
        # the machine (and this runner, which is nearly idle). High values: a noisy run.
        "other_cpu_share": round(machine_share - clients_share - cpu / elapsed, 3),
        "server_cpu_s_per_10k_messages": round(cpu / messages * 1e4, 4) if messages else None,
        "server_peak_rss_mb": mb(final["hwm_kib"]),
        "server_idle_rss_mb": server.idle["rss_mb"],
        "client_statuses": sent["statuses"],
    }


async def measure_stall(variant: Variant, layout: Layout, seconds: float) -> Json:
    """Measure server memory while every handler has stopped reading and clients push."""
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
        for client in clients:
            await client.expect("streaming", STARTUP_TIMEOUT_S)
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
    """Send one 20 MiB message and see whether the server refuses it (16 MiB limit)."""
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
        "server_bytes_read": final["bytes"],
        "server_peak_rss_mb": mb(final["hwm_kib"]),
    }


def machine() -> Json:
    """Describe the machine and packages that ran the benchmark."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    versions: dict[str, str | None] = {}
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
    """Take the medians of the rates and the maximum of peak RSS over the repeats."""

    def median(key: str) -> float | None:
        values = [run[key] for run in runs if run[key] is not None]
        return round(statistics.median(values), 4) if values else None

    return {
        "messages_per_s": median("messages_per_s"),
        "mb_per_s": median("mb_per_s"),
        "server_cpu_s_per_10k_messages": median("server_cpu_s_per_10k_messages"),
        "server_cpu_share": median("server_cpu_share"),
        "clients_cpu_share": median("clients_cpu_share"),
        "other_cpu_share": median("other_cpu_share"),
        "other_cpu_share_max": max(run["other_cpu_share"] for run in runs),
        "server_peak_rss_mb": max(run["server_peak_rss_mb"] for run in runs),
        "repeats": len(runs),
        "runs": runs,
    }


def log(text: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> Json:
    """Run every measurement, interleaved, into one results document."""
    started = time.monotonic()
    quiet = await busy_cores(1.0)
    log(f"busy cores before starting (other work on the machine): {quiet:.2f}")
    load_start = loadavg()
    throughput: dict[str, dict[str, list[Json]]] = {s.name: {} for s in SCENARIOS}
    for repeat in range(1, args.repeat + 1):
        for scenario in SCENARIOS:
            for variant in scenario.variants:
                log(f"throughput {scenario.name} {variant.name} (repeat {repeat})")
                result = await measure_throughput(variant, scenario, args.seconds, args.warmup)
                log(
                    f"  {result['messages_per_s']:.0f} msg/s {result['mb_per_s']} MB/s,"
                    f" other CPU {result['other_cpu_share']:.2f} cores"
                )
                throughput[scenario.name].setdefault(variant.name, []).append(result)
    stall: dict[str, dict[str, Json]] = {layout.name: {} for layout, _ in STALL_TESTS}
    for layout, variants in STALL_TESTS:
        for variant in variants:
            log(f"stall {layout.name} {variant.name}")
            result = await measure_stall(variant, layout, args.stall_seconds)
            log(
                f"  peak RSS {result['server_peak_rss_mb']} MB, pushed "
                f"{result['client_bytes_pushed_mib']} MiB"
            )
            stall[layout.name][variant.name] = result
    oversize = {}
    for variant in (GRPC_AIO, GRPCLIB):
        log(f"oversize {variant.name}")
        oversize[variant.name] = await measure_oversize(variant)
    return {
        "benchmark": "transport",
        "command": " ".join(
            ["python", "benchmarks/experiments/transport/run_transport.py", *sys.argv[1:]]
        ),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "machine_load": {
            "busy_cores_before_start": round(quiet, 3),
            "loadavg_at_start": load_start,
            "loadavg_at_end": loadavg(),
        },
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
                "grpc.http2.lookahead_bytes": "256 KiB in the 'window 256K' variant only",
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
    """Render the result tables as Markdown."""
    lines = [
        "| scenario | variant | msg/s | MB/s | server CPU s / 10k msg | server cores"
        " | client cores | other cores | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, by_variant in results["throughput"].items():
        for name, row in by_variant.items():
            lines.append(
                f"| {scenario} | {name} | {row['messages_per_s']:,.0f} | {row['mb_per_s']:.1f}"
                f" | {row['server_cpu_s_per_10k_messages']:.3f}"
                f" | {row['server_cpu_share']:.2f} | {row['clients_cpu_share']:.2f}"
                f" | {row['other_cpu_share']:.2f} | {row['server_peak_rss_mb']:.0f} |"
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
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before the window")
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
