"""Benchmark runner: the emulator against the machine's own ceilings, in one run.

Everything runs on loopback, in separate processes: the server under test (``python -m
tap_emulator serve``), the receive-only and write-only ceilings (``ceilings.py``) and the
load generators (``load/client.py``, two processes by default). Each server writes into a
fresh tmpfs mounted for it (so the disk never limits and nothing is left), unmounted after.

Phases (``make bench``, about 5 minutes):

1. **ceilings and peak**, interleaved ``--repeat`` times (the order rotates every repeat):
   receive-only, write-only, and the emulator, closed loop at ``--streams`` streams;
2. **sweep**: emulator and receive-only, closed loop, at each of ``--sweep`` streams;
3. **latency**: the emulator, open loop at 50% and 90% of its measured throughput (the
   median of phase 1): arrival-to-publication from the server's histogram (buckets
   differenced over the window) and per file (ctime of the published file minus the
   message's scheduled send time);
4. **burst**: ``--burst-streams`` streams offering 10x the measured throughput for
   ``--burst-seconds``; the server's RSS is sampled every 20 ms;
5. **ext_proc** (``extproc/``): one Envoy with three listeners (no tap, tap filter,
   ext_proc into the emulator), the same h2load mix on each in interleaved closed-loop and
   fixed-rate rounds: Envoy CPU per request per arm, the emulator's CPU per transaction,
   loss. ``--only standard`` or ``--only extproc`` runs one part.

Every emulator run is verified file by file (``load/verify.py``): ``lost`` is messages
acknowledged (streams answered OK) minus the valid files found. Results go to
``benchmarks/results/latest.json`` (and ``--out``), with a Markdown table and PNG plots
written by ``report.py`` next to ``--out``.

    python benchmarks/bench.py                      # the standard set and ext_proc
    python benchmarks/bench.py --only extproc       # the ext_proc part alone
    python benchmarks/bench.py --quick              # a smoke run (~1.5 minutes)
    python benchmarks/bench.py --reference          # also into results/reference/
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from extproc import phase as extproc_phase  # noqa: E402
from load import client as load_client  # noqa: E402
from load import payloads  # noqa: E402
from load.verify import verify  # noqa: E402
from procs import (  # noqa: E402
    PRODUCT,
    Proc,
    Scratch,
    kill_children,
    machine_busy_s,
    proc_cpu_s,
    proc_memory_kib,
)

from tap_emulator.config import Settings  # noqa: E402

RESULTS = HERE / "results"
LATEST = RESULTS / "latest.json"
REFERENCE = RESULTS / "reference"
PACKAGES = (
    "grpcio",
    "protobuf",
    "uvloop",
    "prometheus-client",
    "matplotlib",
    "py-spy",
)
LISTENING = re.compile(r"listening tap=(\S+):(\d+) metrics=(\S+):(\d+)")
START_TIMEOUT_S = 30.0
WRITE_EVENT_KEYS = frozenset({"event", "port", "pid"})
PARTS = ("standard", "extproc")
PRODUCT_SETTINGS = Settings()
Json = dict[str, Any]


def product_commit() -> str:
    """The repository's commit, with "+dirty" when tap_emulator/ has uncommitted changes."""
    if PRODUCT[0] != REPO:
        return f"{PRODUCT[0]} (--product-dir)"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tap_emulator"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def describe_machine() -> Json:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "product_commit": product_commit(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class Server:
    """A server under test: the emulator, or the receive-only ceiling."""

    proc: Proc
    kind: str  # "emulator" or "receive"
    port: int
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def snapshot(self) -> Json:
        """Counters (messages, bytes, files, latency buckets) and the process's CPU and RSS."""
        t = time.monotonic()
        wall_ns = time.time_ns()
        if self.kind == "receive":
            count = len(self.proc.events)
            self.proc.signal(signal.SIGUSR1)
            event = self.proc.event("snapshot", 10.0, after=count)
            counters = {"messages": event["messages"], "bytes": event.get("bytes", 0), "files": 0}
        else:
            counters = scrape(self.metrics_port or 0)
        return {
            **counters,
            "t": t,
            "wall_ns": wall_ns,
            "cpu_s": proc_cpu_s(self.pid),
            **proc_memory_kib(self.pid),
        }


def per_peer_flags() -> list[str]:
    """Every simulated proxy connects from 127.0.0.1, one peer address to the emulator: its
    per-peer share of the stream slots is lifted to the whole limit, as many proxies from
    many addresses would have it (``--server-arg`` can set it back). Products older than
    the per-peer limit (``--product-dir``) get nothing."""
    config = PRODUCT[0] / "tap_emulator" / "config.py"
    with contextlib.suppress(OSError):
        if "max_streams_per_peer" in config.read_text():
            return ["--max-streams-per-peer", str(PRODUCT_SETTINGS.max_concurrent_streams)]
    return []


def page_flags() -> list[str]:
    """The web page on a free port (it is on by default, so it is measured as deployed);
    products older than the page (``--product-dir``) get nothing."""
    config = PRODUCT[0] / "tap_emulator" / "config.py"
    with contextlib.suppress(OSError):
        if "ui_listen" in config.read_text():
            return ["--ui-listen", "127.0.0.1:0"]
    return []


class Measured(Protocol):
    """What `Bench.measure` needs of a server: its pid and counter snapshots."""

    @property
    def pid(self) -> int: ...

    def snapshot(self) -> Json: ...


def scrape(port: int) -> Json:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: Json = {"messages": 0.0, "bytes": 0.0, "files": 0.0, "buckets": {}}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value_text = line.rpartition(" ")
        value = float(value_text)
        base = name.split("{", 1)[0]
        if base == "tap_emulator_messages_received_total":
            out["messages"] += value
        elif base == "tap_emulator_received_bytes_total":  # one sample per source
            out["bytes"] += value
        elif base == "tap_emulator_files_written_total":
            out["files"] += value
        elif base == "tap_emulator_publish_latency_seconds_bucket":
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out["buckets"][le] = value
        elif base == "tap_emulator_publish_latency_seconds_sum":
            out["latency_sum"] = value
        elif base == "tap_emulator_backpressure_seconds_total":
            out["backpressure_s"] = value
        elif base == "tap_emulator_queue_items":
            out["queue_items"] = value
        elif base == "tap_emulator_messages_rejected_total":
            out["rejected"] = out.get("rejected", 0.0) + value
    return out


def histogram_quantiles(before: Json, after: Json) -> Json:
    """p50/p99 (ms) from differenced cumulative buckets, interpolated within a bucket."""
    bounds = sorted(after["buckets"], key=lambda le: float("inf") if le == "+Inf" else float(le))
    diffs = [(le, after["buckets"][le] - before["buckets"].get(le, 0.0)) for le in bounds]
    total = diffs[-1][1] if diffs else 0.0
    out: Json = {"count": int(total), "cumulative": {le: int(c) for le, c in diffs}}
    if total <= 0:
        return out
    out["mean_ms"] = round(
        (after.get("latency_sum", 0.0) - before.get("latency_sum", 0.0)) / total * 1e3, 3
    )
    for q in (0.5, 0.9, 0.99, 0.999):
        target = q * total
        lower, below = 0.0, 0.0
        for le, cumulative in diffs:
            upper = float("inf") if le == "+Inf" else float(le)
            if cumulative >= target:
                if upper == float("inf"):
                    value = lower
                else:
                    share = (target - below) / max(cumulative - below, 1e-9)
                    value = lower + share * (upper - lower)
                out[f"p{q * 100:g}_ms"] = round(value * 1e3, 3)
                break
            lower, below = upper, cumulative
    under_50 = dict(diffs).get("0.05", 0.0)
    out["share_under_50ms"] = round(under_50 / total, 6)
    last_finite = [le for le, c in diffs if le != "+Inf" and c < total]
    out["max_bucket_ms"] = (
        ">" + str(float(last_finite[-1]) * 1e3)
        if last_finite and last_finite[-1] == bounds[-2]
        else next((round(float(le) * 1e3, 3) for le, c in diffs if c >= total), None)
    )
    return out


# --- sampling ---------------------------------------------------------------------------


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_memory_kib(self.pid)["rss_kib"]
            if rss:
                self.samples.append((round(time.monotonic() - self.t0, 3), rss))
            self._stop.wait(self.interval)

    @property
    def max_mb(self) -> float:
        return max((kib for _, kib in self.samples), default=0) / 1024


# --- the runner -------------------------------------------------------------------------


@dataclass
class Clients:
    procs: list[Proc]
    tag: int
    latency_files: list[Path] = field(default_factory=list)

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p.pid) for p in self.procs)

    def stop(self) -> list[Json]:
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        streams: list[Json] = []
        for proc in self.procs:
            done = proc.event("done", 90.0)
            streams.extend(done["streams"])
            proc.stop()
        return streams


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mix = payloads.Mix.parse(args.kinds, args.bodies, args.redact_fraction)
        self.catalog = payloads.build_catalog(self.mix)
        self.scratch = Scratch()
        self.tags = itertools.count(1)
        self.runs: list[Json] = []
        self.started = time.monotonic()
        with self.scratch.directory() as directory:
            self.clock_lag = coarse_clock_lag_ms(directory)

    # --- processes ---

    def start_emulator(
        self,
        directory: Path,
        *,
        flags: tuple[str, ...] = (),
        port: int = 0,
    ) -> Server:
        serve = [
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            "127.0.0.1:0",
            *page_flags(),
            "--output-dir",
            str(directory),
            *per_peer_flags(),
            *self.args.server_arg,
            *flags,
        ]
        proc = Proc([sys.executable, "-m", "tap_emulator", *serve], "emulator", product=True)

        def listening() -> re.Match[str] | None:
            for line in proc.stderr:
                match = LISTENING.search(line)
                if match:
                    return match
            return None

        match = proc.wait_for(listening, START_TIMEOUT_S, "listening line")
        return Server(proc, "emulator", int(match.group(2)), int(match.group(4)))

    def start_receive_only(self) -> Server:
        proc = Proc([sys.executable, str(HERE / "ceilings.py"), "receive"], "receive-only")
        event = proc.event("listening", START_TIMEOUT_S)
        return Server(proc, "receive", int(event["port"]))

    def start_clients(
        self, port: int, streams: int, rate: float, *, latency_dir: Path | None = None
    ) -> Clients:
        tag = next(self.tags) & 0xFFFF
        processes = max(1, min(self.args.clients, streams // 2))
        per = [2 * (streams // 2 // processes)] * processes
        per[-1] += streams - sum(per)
        base = 0
        procs = []
        files = []
        for index, count in enumerate(per):
            if count <= 0:
                continue
            argv = [
                sys.executable,
                "-m",
                "load.client",
                "--port",
                str(port),
                "--stream-base",
                str(base),
                "--streams",
                str(count),
                "--rate",
                f"{rate * count / streams:.3f}" if rate > 0 else "0",
                "--seconds",
                "600",
                "--tag",
                str(tag),
                *self.mix.cli_args(),
            ]
            if latency_dir is not None:
                path = latency_dir / f"latency-{tag}-{index}.bin"
                argv += ["--latency-out", str(path)]
                files.append(path)
            procs.append(Proc(argv, f"client{index}"))
            base += count
        clients = Clients(procs, tag, files)
        for proc in procs:
            proc.event("streaming", START_TIMEOUT_S)
        return clients

    # --- one measured run ---

    def measure(
        self,
        phase: str,
        server: Measured,
        clients: Clients,
        *,
        warmup: float,
        window: float,
        sampler_interval: float = 0.1,
    ) -> tuple[Json, list[Json]]:
        time.sleep(warmup)
        with RssSampler(server.pid, sampler_interval) as sampler:
            before = server.snapshot()
            busy0, clients0 = machine_busy_s(), clients.cpu_s()
            time.sleep(window)
            after = server.snapshot()
            busy1, clients1 = machine_busy_s(), clients.cpu_s()
            streams = clients.stop()
        elapsed = after["t"] - before["t"]
        messages = after["messages"] - before["messages"]
        server_cpu = after["cpu_s"] - before["cpu_s"]
        client_cpu = clients1 - clients0
        run: Json = {
            "phase": phase,
            "window_s": round(elapsed, 3),
            "msgs_per_s": round(messages / elapsed, 1),
            "mb_per_s": round((after["bytes"] - before["bytes"]) / elapsed / 1e6, 2),
            "files_per_s": round((after["files"] - before["files"]) / elapsed, 1),
            "server_cpu_s_per_10k": round(server_cpu / max(messages, 1) * 1e4, 4),
            "server_cores": round(server_cpu / elapsed, 3),
            "client_cores": round(client_cpu / elapsed, 3),
            "other_cores": round(max(0.0, (busy1 - busy0) - server_cpu - client_cpu) / elapsed, 3),
            "peak_rss_mb": round(after["hwm_kib"] / 1024, 1),
            "rss_sampled_max_mb": round(sampler.max_mb, 1),
            "streams_ok": sum(1 for s in streams if s["code"] == "OK"),
            "streams_not_ok": [
                f"{s['code']}: {s['details']}" for s in streams if s["code"] != "OK"
            ][:5],
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "_before": before,
            "_after": after,
            "_samples": sampler.samples,
        }
        return run, streams

    def closed_loop(self, label: str, target: str, streams: int, rep: int = 0) -> Json:
        args = self.args
        print(f"  {label}: {target} closed loop, {streams} streams", flush=True)
        if target == "receive-only":
            server = self.start_receive_only()
            try:
                clients = self.start_clients(server.port, streams, 0.0)
                run, _ = self.measure(
                    label, server, clients, warmup=args.warmup, window=args.window
                )
            finally:
                server.proc.stop()
            run.update(target=target, streams=streams, rep=rep)
            return self._keep(run)
        with self.scratch.directory() as directory:
            server = self.start_emulator(directory)
            try:
                clients = self.start_clients(server.port, streams, 0.0)
                run, sent = self.measure(
                    label, server, clients, warmup=args.warmup, window=args.window
                )
            finally:
                run_status = server.proc.stop()
            window = (run["_before"]["wall_ns"], run["_after"]["wall_ns"])
            checked, _ = verify(directory, self.catalog, clients.tag, sent)
            run.update(self._verified(checked, window, directory, clients.tag, sent))
            run.update(target=target, streams=streams, rep=rep, exit_status=run_status)
        return self._keep(run)

    def _verified(
        self,
        checked: Any,
        window: tuple[int, int],
        directory: Path,
        tag: int,
        sent: list[Json],
    ) -> Json:
        # files verified on disk whose publication (ctime) fell inside the window
        in_window = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".pb"):
                    ctime = entry.stat(follow_symlinks=False).st_ctime_ns
                    if window[0] <= ctime < window[1]:
                        in_window += 1
        seconds = (window[1] - window[0]) / 1e9
        data = checked.as_dict()
        ok = data["unexpected"] == 0 and data["temporaries"] == 0
        return {
            "verified": data,
            "lost": data["lost"],
            "files_per_s_on_disk": round(in_window / seconds, 1) if ok else 0.0,
        }

    def write_only(self, label: str, rep: int = 0) -> Json:
        args = self.args
        print(f"  {label}: write-only ceiling", flush=True)
        with self.scratch.directory() as directory:
            proc = Proc(
                [
                    sys.executable,
                    str(HERE / "ceilings.py"),
                    "write",
                    "--dir",
                    str(directory),
                    "--seconds",
                    "600",
                    *self.mix.cli_args(),
                ],
                "write-only",
            )
            listening = proc.event("listening", START_TIMEOUT_S)
            server = Server(proc, "receive", 0)
            time.sleep(args.warmup)
            with RssSampler(proc.pid, 0.1):
                before = server.snapshot()
                busy0 = machine_busy_s()
                time.sleep(args.window)
                after = server.snapshot()
                busy1 = machine_busy_s()
            proc.signal(signal.SIGTERM)
            final = proc.event("exit", 120.0)
            proc.stop()
        elapsed = after["t"] - before["t"]
        files = after["messages"] - before["messages"]
        cpu = after["cpu_s"] - before["cpu_s"]
        run = {
            "phase": label,
            "target": "write-only",
            "rep": rep,
            "window_s": round(elapsed, 3),
            "files_per_s": round(files / elapsed, 1),
            "msgs_per_s": round(files / elapsed, 1),
            "server_cpu_s_per_10k": round(cpu / max(files, 1) * 1e4, 4),
            "server_cores": round(cpu / elapsed, 3),
            "other_cores": round(max(0.0, busy1 - busy0 - cpu) / elapsed, 3),
            "peak_rss_mb": round(after["hwm_kib"] / 1024, 1),
            "published": final["messages"],
            "files_on_disk": final["files_on_disk"],
            "lost": final["messages"] - final["files_on_disk"],
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "pool_settings": {k: v for k, v in listening.items() if k not in WRITE_EVENT_KEYS},
        }
        return self._keep(run)

    def open_loop(self, label: str, rate: float, streams: int) -> tuple[Json, list[float]]:
        args = self.args
        print(f"  {label}: emulator open loop at {rate:,.0f} msg/s, {streams} streams", flush=True)
        with self.scratch.directory() as directory:
            server = self.start_emulator(directory)
            latency_dir = directory.parent / f"{directory.name}-lat"
            latency_dir.mkdir()
            try:
                clients = self.start_clients(server.port, streams, rate, latency_dir=latency_dir)
                run, sent = self.measure(
                    label, server, clients, warmup=args.warmup, window=args.window
                )
            finally:
                run_status = server.proc.stop()
            window = (run["_before"]["wall_ns"], run["_after"]["wall_ns"])
            scheduled: dict[int, Any] = {}
            for path in clients.latency_files:
                scheduled.update(load_client.read_latency(path))
            checked, latencies = verify(
                directory, self.catalog, clients.tag, sent, scheduled, window
            )
            lag = self.clock_lag["median_ms"]
            latencies = [value + lag for value in latencies]
            shutil.rmtree(latency_dir, ignore_errors=True)
            run.update(self._verified(checked, window, directory, clients.tag, sent))
        run.update(
            target="emulator",
            streams=streams,
            offered_msgs_per_s=round(rate, 1),
            exit_status=run_status,
            histogram=histogram_quantiles(run["_before"], run["_after"]),
            per_file={**percentiles(latencies), "ctime_lag_corrected": self.clock_lag},
        )
        return self._keep(run), latencies

    def burst(self, rate: float) -> Json:
        args = self.args
        streams = args.burst_streams
        print(
            f"  burst: {streams} streams offering {rate:,.0f} msg/s for {args.burst_seconds}s",
            flush=True,
        )
        with self.scratch.directory() as directory:
            server = self.start_emulator(directory)
            idle_rss = proc_memory_kib(server.pid)["rss_kib"] / 1024
            try:
                clients = self.start_clients(server.port, streams, rate)
                run, sent = self.measure(
                    "burst",
                    server,
                    clients,
                    warmup=0.2,
                    window=args.burst_seconds,
                    sampler_interval=0.02,
                )
            finally:
                run_status = server.proc.stop()
            window = (run["_before"]["wall_ns"], run["_after"]["wall_ns"])
            checked, _ = verify(directory, self.catalog, clients.tag, sent)
            run.update(self._verified(checked, window, directory, clients.tag, sent))
        run.update(
            target="emulator",
            streams=streams,
            offered_msgs_per_s=round(rate, 1),
            idle_rss_mb=round(idle_rss, 1),
            exit_status=run_status,
            backpressure_s=round(
                run["_after"].get("backpressure_s", 0.0)
                - run["_before"].get("backpressure_s", 0.0),
                3,
            ),
            rss_timeline=[[t, round(kib / 1024, 1)] for t, kib in run["_samples"]],
        )
        return self._keep(run)

    def _keep(self, run: Json) -> Json:
        for key in ("_before", "_after", "_samples"):
            run.pop(key, None)
        self.runs.append(run)
        shown = {
            k: run.get(k)
            for k in (
                "msgs_per_s",
                "files_per_s",
                "server_cores",
                "client_cores",
                "other_cores",
                "peak_rss_mb",
                "lost",
                "streams_ok",
            )
        }
        if run.get("streams_not_ok"):
            shown["streams_not_ok"] = run["streams_not_ok"][:1]
        print(f"    {shown}", flush=True)
        return run


def coarse_clock_lag_ms(directory: Path, samples: int = 400) -> Json:
    """How far behind real time a published file's ctime is (the kernel's coarse clock).

    Each sample links a file and compares its ctime with the wall clock read around the
    `link`; the lag is spread over one clock tick. Per-file latencies are corrected by the
    median lag, and are uncertain by about half the spread."""
    stamps: list[float] = []
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # As in a run: files are linked with nobody looking, and stat()ed only afterwards
        # (a stat() between changes can make the kernel hand out fine-grained stamps).
        for index in range(samples):
            name = f"clock-{index}"
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd))
            before = time.time_ns()
            os.link(name, f"{name}.linked", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            after = time.time_ns()
            stamps.append((before + after) / 2)
            time.sleep(0.0003)  # spread the samples over several ticks
        lags = [
            (stamp - os.stat(f"clock-{index}.linked", dir_fd=dir_fd).st_ctime_ns) / 1e6
            for index, stamp in enumerate(stamps)
        ]
        for index in range(samples):
            os.unlink(f"clock-{index}", dir_fd=dir_fd)
            os.unlink(f"clock-{index}.linked", dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return {
        "min_ms": round(min(lags), 3),
        "median_ms": round(statistics.median(lags), 3),
        "max_ms": round(max(lags), 3),
    }


def percentiles(values: list[float]) -> Json:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "count": len(ordered),
        "p50_ms": pick(0.5),
        "p90_ms": pick(0.9),
        "p99_ms": pick(0.99),
        "max_ms": round(ordered[-1], 3),
    }


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else 0.0


def run_standard(bench: Bench) -> Json:
    args = bench.args
    machine = describe_machine()
    print(f"machine: {machine['nproc']} x {machine['cpu_model']}, load {machine['loadavg_before']}")
    print(f"mix: {bench.catalog.stats()}", flush=True)

    print("phase 1: ceilings and emulator, interleaved", flush=True)
    order = ["receive-only", "write-only", "emulator"]
    for rep in range(args.repeat):
        rotated = order[rep % 3 :] + order[: rep % 3]
        for target in rotated:
            if target == "write-only":
                bench.write_only("ceilings", rep)
            else:
                bench.closed_loop("ceilings", target, args.streams, rep)

    def med(target: str, key: str = "msgs_per_s") -> float:
        return median(
            [r[key] for r in bench.runs if r["phase"] == "ceilings" and r["target"] == target]
        )

    emulator = med("emulator")
    receive = med("receive-only")
    write = med("write-only", "files_per_s")

    sweep: list[Json] = []
    if args.sweep:
        print("phase 2: throughput against concurrent streams", flush=True)
        for streams in args.sweep:
            for target in ("emulator", "receive-only"):
                sweep.append(bench.closed_loop("sweep", target, streams))

    print("phase 3: latency, open loop", flush=True)
    latency: Json = {}
    latencies: dict[str, list[float]] = {}
    for share in (0.5, 0.9):
        run, values = bench.open_loop(f"latency-{int(share * 100)}", share * emulator, args.streams)
        latency[f"{int(share * 100)}"] = run
        latencies[f"{int(share * 100)}"] = values

    print("phase 4: overload burst", flush=True)
    burst = bench.burst(10 * emulator)

    emulator_runs = [r for r in bench.runs if r["target"] == "emulator"]
    lost = sum(r.get("lost", 0) for r in emulator_runs)
    lower = min(receive, write)
    half = latency["50"]
    summary = {
        "emulator_msgs_per_s": emulator,
        "emulator_mb_per_s": med("emulator", "mb_per_s"),
        "emulator_files_per_s_on_disk": med("emulator", "files_per_s_on_disk"),
        "emulator_cpu_s_per_10k": med("emulator", "server_cpu_s_per_10k"),
        "emulator_peak_rss_mb": max(
            r["peak_rss_mb"] for r in emulator_runs if r["phase"] == "ceilings"
        ),
        "receive_only_msgs_per_s": receive,
        "receive_only_cpu_s_per_10k": med("receive-only", "server_cpu_s_per_10k"),
        "write_only_files_per_s": write,
        "write_only_cpu_s_per_10k": med("write-only", "server_cpu_s_per_10k"),
        "lower_ceiling": "receive-only" if receive <= write else "write-only",
        "ratio_to_ceiling": round(emulator / lower, 3) if lower else 0.0,
        # Both ceilings are CPU-bound on the same cores, and the emulator does both jobs:
        # even with nothing else to do it could not beat 1 / (1/receive + 1/write).
        "additive_bound_msgs_per_s": round(1 / (1 / receive + 1 / write), 1)
        if receive and write
        else 0.0,
        "lost": lost,
        "ratio_to_additive_bound": round(emulator * (1 / receive + 1 / write), 3)
        if receive and write
        else 0.0,
        "p50_ms_half_load": half["histogram"].get("p50_ms"),
        "p99_ms_half_load": half["histogram"].get("p99_ms"),
        "max_ms_half_load_per_file": half["per_file"].get("max_ms"),
        "p99_ms_half_load_per_file": half["per_file"].get("p99_ms"),
        "p50_ms_90_load": latency["90"]["histogram"].get("p50_ms"),
        "p99_ms_90_load": latency["90"]["histogram"].get("p99_ms"),
        "max_ms_90_load_per_file": latency["90"]["per_file"].get("max_ms"),
        "peak_rss_mb_burst": burst["peak_rss_mb"],
        "burst_msgs_per_s": burst["msgs_per_s"],
        "mean_other_cores": round(
            statistics.mean(r.get("other_cores", 0.0) for r in bench.runs), 3
        ),
    }
    summary["goals"] = {
        "throughput_ratio_ge_0.8_zero_loss": summary["ratio_to_ceiling"] >= 0.8 and lost == 0,
        "p99_half_load_lt_50ms": (summary["p99_ms_half_load"] or 1e9) < 50,
        "peak_rss_burst_lt_200mb": summary["peak_rss_mb_burst"] < 200,
    }
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "schema": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - bench.started, 1),
        "command": " ".join(sys.argv),
        "machine": machine,
        "config": {
            "streams": args.streams,
            "clients": args.clients,
            "warmup_s": args.warmup,
            "window_s": args.window,
            "repeat": args.repeat,
            "sweep": args.sweep,
            "burst_streams": args.burst_streams,
            "burst_seconds": args.burst_seconds,
            "server_args": args.server_arg,
        },
        "mix": {
            **bench.mix.describe(),
            **{k: round(v, 3) for k, v in bench.catalog.stats().items()},
        },
        **summary,
        "latency": {
            k: {
                key: v.get(key)
                for key in ("offered_msgs_per_s", "msgs_per_s", "histogram", "per_file", "lost")
            }
            for k, v in latency.items()
        },
        "latency_samples_ms": {k: thin(v, 4000) for k, v in latencies.items()},
        "burst": burst,
        "sweep": [
            {
                k: r.get(k)
                for k in (
                    "target",
                    "streams",
                    "msgs_per_s",
                    "mb_per_s",
                    "server_cores",
                    "client_cores",
                    "other_cores",
                    "peak_rss_mb",
                    "lost",
                )
            }
            for r in sweep
        ],
        "runs": bench.runs,
    }


def run_header(bench: Bench) -> Json:
    """The parts of a result every run has, for a run without the standard set."""
    machine = describe_machine()
    print(f"machine: {machine['nproc']} x {machine['cpu_model']}, load {machine['loadavg_before']}")
    return {
        "schema": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": 0.0,
        "command": " ".join(sys.argv),
        "machine": machine,
        "config": {"only": list(bench.args.only), "server_args": bench.args.server_arg},
    }


def run_extproc(bench: Bench) -> Json:
    args = bench.args
    settings = extproc_phase.Settings(
        seconds=args.extproc_seconds,
        repeat=args.extproc_repeat,
        rate=args.extproc_rate,
        connections=args.extproc_connections,
    )
    return extproc_phase.ExtProcPhase(bench, settings).run()


def thin(values: list[float], keep: int) -> list[float]:
    """A sorted subsample (every n-th value, and the maximum) to keep the JSON small."""
    ordered = sorted(values)
    if len(ordered) <= keep:
        return [round(v, 3) for v in ordered]
    step = len(ordered) / keep
    picked = [ordered[int(i * step)] for i in range(keep)]
    picked.append(ordered[-1])
    return [round(v, 3) for v in picked]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=32, help="streams of the standard runs")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before each window")
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per run")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repeats of phase 1")
    parser.add_argument(
        "--sweep",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[4, 16, 64, 256],
        help="stream counts of phase 2 ('' to skip)",
    )
    parser.add_argument("--burst-streams", type=int, default=256)
    parser.add_argument("--burst-seconds", type=float, default=5.0)
    parser.add_argument("--kinds", default=payloads.DEFAULT_KINDS)
    parser.add_argument("--bodies", default=payloads.DEFAULT_BODIES)
    parser.add_argument("--redact-fraction", type=float, default=payloads.DEFAULT_REDACT_FRACTION)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for `tap-emulator serve` (repeatable), e.g. --server-arg=--writers=4",
    )
    parser.add_argument(
        "--product-dir",
        type=Path,
        default=None,
        help="run the servers on the tap_emulator package found in this directory",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--reference", action="store_true", help="also write JSON, Markdown, PNGs to reference/"
    )
    parser.add_argument(
        "--only",
        type=lambda text: tuple(part for part in text.split(",") if part),
        default=PARTS,
        help="which parts to run, comma-separated: standard, extproc (default both)",
    )
    parser.add_argument(
        "--extproc-seconds", type=float, default=5.0, help="seconds per ext_proc round"
    )
    parser.add_argument(
        "--extproc-repeat", type=int, default=3, help="interleaved repeats of the ext_proc rounds"
    )
    parser.add_argument(
        "--extproc-rate", type=float, default=500.0, help="req/s of the fixed-rate rounds"
    )
    parser.add_argument(
        "--extproc-connections", type=int, default=10, help="client connections per round"
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--burst-only",
        type=float,
        default=0.0,
        metavar="RATE",
        help="only run the burst phase, offering RATE msg/s (prints JSON; no latest.json)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(PARTS)
    if unknown or not args.only:
        parser.error(f"--only: choose among {', '.join(PARTS)} (got {','.join(args.only)})")
    if args.reference and "standard" not in args.only:
        parser.error("--reference needs the standard set")
    if args.quick:
        args.window, args.warmup, args.repeat = 2.0, 0.5, 1
        args.sweep, args.burst_seconds = [4, 64], 2.0
        args.extproc_seconds, args.extproc_repeat = 2.0, 1
    return args


def main() -> int:
    args = parse_args()
    if args.product_dir is not None:
        PRODUCT[0] = args.product_dir.resolve()
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.burst_only:
        try:
            burst = bench.burst(args.burst_only)
        finally:
            kill_children()
            bench.scratch.close()
        text = json.dumps(burst, indent=1) + "\n"
        if args.out is not None:
            args.out.write_text(text)
        burst.pop("rss_timeline", None)
        print(json.dumps(burst, indent=1))
        return 0
    try:
        result = run_standard(bench) if "standard" in args.only else run_header(bench)
        if "extproc" in args.only:
            print("phase 5: ext_proc, one Envoy, three arms", flush=True)
            result["extproc"] = run_extproc(bench)
            result["duration_s"] = round(time.monotonic() - bench.started, 1)
            result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        kill_children()
        bench.scratch.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    outputs = [LATEST]
    if args.out is not None:
        outputs.append(args.out)
    if args.reference:
        REFERENCE.mkdir(parents=True, exist_ok=True)
        outputs.append(REFERENCE / "bench.json")
    text = json.dumps(result, indent=1) + "\n"
    for path in outputs:
        path.write_text(text)
    import report

    for path in outputs[1:] or outputs:
        report.write_report(result, path.with_suffix(".md"), path.parent)
    print(report.summary_table(result))
    print(f"wrote {', '.join(str(p) for p in outputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
