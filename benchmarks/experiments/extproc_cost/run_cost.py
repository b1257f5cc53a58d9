"""What the ext_proc tap costs, one change at a time, side by side in one run.

One Envoy 1.40 under test (``--concurrency 1``) with one listener per *arm*, the same
route to the same direct_response upstream Envoy and the same h2load mix as the ext_proc
benchmark (`benchmarks/extproc/`). Each ext_proc arm has its own side-stream cluster and its
own server process, so its Envoy stats and its server's CPU are its own. The servers are
the product (``tap-emulator serve``, any flags, any package directory) or the minimal
ExternalProcessor (`minimal_server.py`).

A round is one arm under load for ``--seconds`` (closed loop, or ``--rate`` req/s over the
connections), then the wait until Envoy has closed every side stream of it (a server that
never answers holds them for the deferred close). Envoy's CPU (``/proc/<pid>/stat``) over
that whole time, less its idle rate over the wait, is divided by the requests its listener
completed. The server's CPU over the same time is divided by the transactions it took in
(files written for the product, streams ended for the minimal server); its threads' CPU and
context switches come from ``/proc/<pid>/task/*``. Arms rotate every repeat; ratios are the
medians of per-round ratios to the same repeat's no-tap round (of the same tracer setting).
The product's web page runs in a child process: its CPU is counted apart.

Suites: ``envoy`` (filter variants), ``final`` (the servers side by side), ``context``,
``transport``, ``page``, ``loss``, ``pending``, ``slow``, ``server``, ``products``. For a
diagnostic run, ``--envoy-debug ext_proc[,http2]`` counts Envoy's debug lines by kind per
round (``--envoy-debug-dir`` keeps them), and ``--server-env GRPC_TRACE=...`` with the
``slow`` suite's ``m_slow_traced`` arm writes the server's gRPC trace to a file.

    python benchmarks/experiments/extproc_cost/run_cost.py --suite final --repeat 3 \
        --modes closed,fixed --rate 400
    python benchmarks/experiments/extproc_cost/run_cost.py --suite envoy --repeat 3
    python benchmarks/experiments/extproc_cost/run_cost.py --suite loss --modes closed
    python benchmarks/experiments/extproc_cost/run_cost.py --suite server \
        --product new=DIR --modes closed
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1]
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from extproc import envoys, h2load  # noqa: E402
from extproc.envoys import Arm, ExtProcOptions  # noqa: E402
from extproc.phase import Envoy, files_written, idle_cpu_cores, scrape_all, start_envoy  # noqa: E402
from procs import CLK_TCK, Proc, Scratch, kill_children, machine_busy_s, proc_cpu_s  # noqa: E402

Json = dict[str, Any]
LISTENING = re.compile(r"listening tap=(\S+):(\d+) metrics=(\S+):(\d+)")
SETTLE_TIMEOUT_S = 15.0
#: More environment for every server (``--server-env``), e.g. GRPC_TRACE for a diagnostic run.
SERVER_ENV: dict[str, str] = {}
TRACED_STDERR = Path(tempfile.gettempdir()) / "extproc_cost-traced-server.log"
SAMPLE_EVERY_S = 0.5
SERVER_COUNTERS = (
    "tap_emulator_streams_refused_total",
    "tap_emulator_extproc_dropped_total",
    "tap_emulator_streams_ended_total",
    "tap_emulator_streams_opened_total",
)
GAUGES = (
    "upstream_rq_active",
    "upstream_cx_active",
    "upstream_rq_pending_active",
    "http2.streams_active",
    "http2.pending_send_bytes",
)


# --- servers ------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    """How to start one ext_proc server: the product (flags, package dir) or the minimal one."""

    kind: str  # "product" or "minimal"
    flags: tuple[str, ...] = ()
    product_dir: Path = REPO


@dataclass
class Server:
    name: str
    spec: ServerSpec
    proc: Proc
    port: int
    metrics_port: int | None = None
    events_seen: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def taken_in(self) -> Json:
        """What the server counts: files written (product) or streams ended (minimal)."""
        if self.spec.kind == "product":
            samples = scrape_all(self.metrics_port or 0)
            refused = {k: v for k, v in samples.items() if v and k.startswith(SERVER_COUNTERS)}
            ended = sum(
                v
                for k, v in samples.items()
                if k.startswith("tap_emulator_streams_ended_total") and 'source="ext_proc"' in k
            )
            return {"transactions": ended, "files": files_written(samples), **refused}
        after = len(self.proc.events)
        self.proc.signal(signal.SIGUSR1)
        event = self.proc.event("counts", 10.0, after=after)
        return {
            "transactions": event["ended_by_us"] + event["ended_by_peer"],
            "streams": event["streams"],
            "messages": event["messages"],
            "ended_by_us": event["ended_by_us"],
            "ended_by_peer": event["ended_by_peer"],
            "cancelled_by_grpc": event.get("cancelled_by_grpc", 0),
            "calls_started": event.get("calls_started", 0),
            "calls_failed": event.get("calls_failed", 0),
        }


def env_for(product_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(product_dir), str(BENCH), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(SERVER_ENV)
    return env


def start_server(name: str, spec: ServerSpec, directory: Path) -> Server:
    if spec.kind == "product":
        argv = [
            sys.executable,
            "-m",
            "tap_emulator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--output-dir",
            str(directory),
            "--max-streams-per-peer",
            "1000",
            "--ui-listen",
            "127.0.0.1:0",  # the page on, as `make bench` runs it (a port of its own)
            *spec.flags,
        ]
        proc = Proc(argv, f"server-{name}", env=env_for(spec.product_dir))

        def listening() -> re.Match[str] | None:
            for line in proc.stderr:
                match = LISTENING.search(line)
                if match:
                    return match
            return None

        match = proc.wait_for(listening, 30.0, "listening line")
        return Server(name, spec, proc, int(match.group(2)), int(match.group(4)))
    argv = [sys.executable, str(HERE / "minimal_server.py"), *spec.flags]
    proc = Proc(argv, f"server-{name}", env=env_for(spec.product_dir))
    event = proc.event("listening", 30.0)
    return Server(name, spec, proc, int(event["port"]))


def children_cpu_s(pid: int) -> float:
    """CPU seconds of a process's live children (the product's web page process)."""
    total = 0.0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                for child in Path(task.path, "children").read_text().split():
                    total += proc_cpu_s(int(child))
    return total


# --- /proc per thread ---------------------------------------------------------------------


def threads(pid: int) -> dict[str, Json]:
    """CPU seconds and context switches per thread name (threads of one name added up)."""
    found: dict[str, Json] = {}
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(task.path, "stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rpartition(")")[2].split()
                cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
                status = Path(task.path, "status").read_text()
                vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
                invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])  # type: ignore[index]
                entry = found.setdefault(name, {"cpu_s": 0.0, "vol": 0, "invol": 0, "n": 0})
                entry["cpu_s"] += cpu
                entry["vol"] += vol
                entry["invol"] += invol
                entry["n"] += 1
    return found


def thread_delta(before: dict[str, Json], after: dict[str, Json]) -> dict[str, Json]:
    out = {}
    for name, now in after.items():
        was = before.get(name, {"cpu_s": 0.0, "vol": 0, "invol": 0})
        out[name] = {
            "cpu_s": round(now["cpu_s"] - was["cpu_s"], 3),
            "vol": now["vol"] - was["vol"],
            "invol": now["invol"] - was["invol"],
            "n": now["n"],
        }
    return out


# --- arms and suites ----------------------------------------------------------------------

CHART = ExtProcOptions()
ISTIO_SAMPLING_PERCENT = 1.0


@dataclass
class ArmSpec:
    name: str
    kind: str
    options: ExtProcOptions = CHART
    server: str | None = None
    tracing_percent: float | None = None
    baseline: str = "notap"  # the no-tap arm its ratio is to


def suite(name: str, products: dict[str, Path]) -> tuple[dict[str, ServerSpec], list[ArmSpec]]:
    """The servers and arms of one experiment."""
    product = ServerSpec("product")
    minimal_end = ServerSpec("minimal", ("--mode", "end"))
    minimal_read = ServerSpec("minimal", ("--mode", "read"))
    if name == "envoy":
        servers = {"product": product, "end": minimal_end, "read": minimal_read}
        no_attrs = replace(
            CHART, attributes=(), extra_metadata=(("x-tap-namespace", envoys.NAMESPACE),)
        )
        lean = replace(no_attrs, trailer_mode="SEND", keepalive=True)
        arms = [
            ArmSpec("notap", "notap"),
            ArmSpec("tap", "tap"),
            ArmSpec("chart", "extproc", CHART, "end"),
            ArmSpec("chart_product", "extproc", CHART, "product"),
            ArmSpec("no_attrs", "extproc", no_attrs, "end"),
            ArmSpec("trailers_none", "extproc", replace(CHART, trailer_mode="SKIP"), "end"),
            ArmSpec(
                "bodies_none",
                "extproc",
                replace(CHART, request_body_mode="NONE", response_body_mode="NONE"),
                "end",
            ),
            ArmSpec("never_returns", "extproc", CHART, "read"),
            ArmSpec("no_keepalive", "extproc", replace(CHART, keepalive=False), "end"),
            ArmSpec(
                "send_body_now",
                "extproc",
                replace(CHART, send_body_without_waiting_for_header_response=True),
                "end",
            ),
            ArmSpec("google_grpc", "extproc", replace(CHART, google_grpc=True), "end"),
            ArmSpec(
                "headers_only_no_attrs",
                "extproc",
                replace(
                    no_attrs,
                    request_body_mode="NONE",
                    response_body_mode="NONE",
                    trailer_mode="SKIP",
                ),
                "end",
            ),
            ArmSpec("lean", "extproc", lean, "end"),
            ArmSpec("notap_tracer", "notap", tracing_percent=ISTIO_SAMPLING_PERCENT),
            ArmSpec(
                "chart_tracer",
                "extproc",
                CHART,
                "end",
                tracing_percent=ISTIO_SAMPLING_PERCENT,
                baseline="notap_tracer",
            ),
            ArmSpec(
                "no_attrs_tracer",
                "extproc",
                no_attrs,
                "end",
                tracing_percent=ISTIO_SAMPLING_PERCENT,
                baseline="notap_tracer",
            ),
        ]
        return servers, arms
    if name == "loss":
        servers = {
            "default": product,
            "conn4000": ServerSpec("product", ("--max-streams-per-connection", "4000")),
            "conn100k": ServerSpec("product", ("--max-streams-per-connection", "100000")),
            "shed500": ServerSpec("product", ("--extproc-max-concurrent-streams", "500")),
            "shed200": ServerSpec("product", ("--extproc-max-concurrent-streams", "200")),
            "conn100k_shed500": ServerSpec(
                "product",
                (
                    "--max-streams-per-connection",
                    "100000",
                    "--extproc-max-concurrent-streams",
                    "500",
                ),
            ),
        }
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"p_{s}", "extproc", CHART, s) for s in servers]
        arms.append(
            ArmSpec(
                "p_default_pool1000",
                "extproc",
                replace(CHART, cluster_max_concurrent_streams=1000),
                "default",
            )
        )
        servers["default2"] = product
        arms[-1].server = "default2"
        return servers, arms
    if name == "pending":
        pending = (
            "--grpc-arg",
            "grpc.server.max_pending_requests=20000",
            "--grpc-arg",
            "grpc.server.max_pending_requests_hard_limit=40000",
        )
        servers = {
            "end": minimal_end,
            "end_pending20k": ServerSpec("minimal", ("--mode", "end", *pending)),
            "product": product,
        }
        for label, directory in products.items():
            servers[label] = ServerSpec("product", product_dir=directory)
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"s_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    if name == "slow":
        slow = ("--mode", "end", "--busy-us", "150")
        servers = {
            "slow": ServerSpec("minimal", slow),
            # its stderr (GRPC_TRACE's lines with --server-env) to a file
            "slow_traced": ServerSpec("minimal", (*slow, "--stderr-to", str(TRACED_STDERR))),
            "slow_conn100k": ServerSpec(
                "minimal", (*slow, "--max-streams-per-connection", "100000")
            ),
            "slow_no_overload": ServerSpec(
                "minimal", (*slow, "--grpc-arg", "grpc.http.overload_protection=0")
            ),
            "slow_conn100k_no_overload": ServerSpec(
                "minimal",
                (
                    *slow,
                    "--max-streams-per-connection",
                    "100000",
                    "--grpc-arg",
                    "grpc.http.overload_protection=0",
                ),
            ),
        }
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"m_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    if name == "server":
        servers = {
            "product": product,
            "end": minimal_end,
            "scan": ServerSpec("minimal", ("--mode", "scan-end")),
            "end_read": ServerSpec("minimal", ("--mode", "end", "--reader", "read")),
        }
        for label, directory in products.items():
            servers[label] = ServerSpec("product", product_dir=directory)
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"s_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    if name == "final":  # the server table of docs/measurements/extproc.md
        servers = {
            "product": product,
            "product_no_page": ServerSpec("product", ("--ui-listen", "")),
            "end": minimal_end,
            "scan": ServerSpec("minimal", ("--mode", "scan-end")),
            "end_grpclib": ServerSpec("minimal", ("--mode", "end", "--transport", "grpclib")),
        }
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"s_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    if name == "context":  # what the product's reads and per-stream calls cost
        servers = {
            "end": minimal_end,
            "end_read": ServerSpec("minimal", ("--mode", "end", "--reader", "read")),
            "end_read_calls": ServerSpec(
                "minimal", ("--mode", "end", "--reader", "read", "--context-calls")
            ),
        }
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"s_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    if name == "transport":
        servers = {
            "end": minimal_end,
            "end_grpclib": ServerSpec("minimal", ("--mode", "end", "--transport", "grpclib")),
            "scan_grpclib": ServerSpec("minimal", ("--mode", "scan-end", "--transport", "grpclib")),
            "product_no_page": ServerSpec("product", ("--ui-listen", "")),
        }
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"s_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    if name == "page":
        servers = {
            "product": product,
            "product_no_page": ServerSpec("product", ("--ui-listen", "")),
            "end": minimal_end,
        }
        for label, directory in products.items():
            servers[label] = ServerSpec("product", product_dir=directory)
            servers[label + "_no_page"] = ServerSpec("product", ("--ui-listen", ""), directory)
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"s_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    if name == "products":
        servers = {"product": product, "end": minimal_end}
        for label, where in products.items():
            directory, _, flags = str(where).partition("::")
            servers[label] = ServerSpec(
                "product", tuple(f for f in flags.split(",") if f), Path(directory)
            )
        arms = [ArmSpec("notap", "notap")]
        arms += [ArmSpec(f"s_{s}", "extproc", CHART, s) for s in servers]
        return servers, arms
    raise SystemExit(f"unknown suite {name}")


# --- one round ----------------------------------------------------------------------------

#: Numbers, hex ids and addresses vary per line: masked, the lines of one kind count together.
VARYING = re.compile(r"0x[0-9a-f]+|\[C\d+\]|\[S\d+\]|\d+(\.\d+)*")
LOG_HEAD = re.compile(r"^\[[^]]*\]\[\d+\]\[(\w+)\]\[(\w+)\] \[[^]]*\] ")


def debug_logging(front: Envoy, components: str) -> None:
    """Turn Envoy's debug log on for `components` and keep every line it writes (only for a
    diagnostic run: the logging costs Envoy CPU)."""
    front.proc.stderr = collections.deque(maxlen=2_000_000)
    for component in components.split(","):
        request = urllib.request.Request(
            f"http://{front.admin}/logging?{component}=debug", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


def log_kinds(lines: list[str]) -> dict[str, int]:
    """Envoy's log lines by kind: the message with its varying parts masked."""
    kinds: collections.Counter[str] = collections.Counter()
    for line in lines:
        kinds[VARYING.sub("N", LOG_HEAD.sub("", line))[:160]] += 1
    return dict(kinds.most_common(40))


def cluster_stats(envoy: Envoy, names: list[str]) -> dict[str, int]:
    pattern = "|".join(re.escape(n) for n in names)
    text = envoy.get(
        "/stats?filter="
        + urllib.request.quote(
            rf"^(cluster\.({pattern})\.|http\.[^.]+\.(ext_proc\.|downstream_rq_completed))"
        )
    )
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if value.isdigit():
            found[key] = int(value)
    return found


@dataclass
class Sampler:
    """Samples the side-stream cluster's gauges while a round runs: their maxima."""

    envoy: Envoy
    cluster: str
    maxima: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            with contextlib.suppress(OSError, ValueError):
                stats = cluster_stats(self.envoy, [self.cluster])
                for gauge in GAUGES:
                    key = f"cluster.{self.cluster}.{gauge}"
                    if key in stats:
                        self.maxima[gauge] = max(self.maxima.get(gauge, 0), stats[key])

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.maxima


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scratch = Scratch()
        self.rounds: list[Json] = []
        self.profiled: Json = {}

    def main(self) -> Json:
        products = dict(p.split("=", 1) for p in self.args.product)
        specs, arms = suite(self.args.suite, {k: Path(v) for k, v in products.items()})
        if self.args.arms:
            wanted = set(self.args.arms.split(","))
            arms = [a for a in arms if a.name in wanted or a.kind == "notap"]
            specs = {k: v for k, v in specs.items() if any(a.server == k for a in arms)}
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(self.scratch.directory())
            tap_dir = stack.enter_context(self.scratch.directory())
            servers: dict[str, Server] = {}
            try:
                upstream = start_envoy(
                    envoys.upstream_bootstrap(work / "answers.sock"), work, "upstream"
                )
                for name, spec in specs.items():
                    directory = stack.enter_context(self.scratch.directory())
                    servers[name] = start_server(name, spec, directory)
                built = [
                    Arm(
                        a.name,
                        a.kind,
                        a.options,
                        servers[a.server].port if a.server else 0,
                        a.tracing_percent,
                    )
                    for a in arms
                ]
                front = start_envoy(
                    envoys.arms_bootstrap(upstream.listener_ports()["upstream"], tap_dir, built),
                    work,
                    "front",
                )
                ports = front.listener_ports()
                if self.args.envoy_debug:
                    debug_logging(front, self.args.envoy_debug)
                idle = idle_cpu_cores(front.pid, 2.0)
                print(f"envoy idle {idle} cores", flush=True)
                for arm in arms:  # warm-up
                    self.round(work, front, upstream, servers, tap_dir, arm, ports, "warmup", -1)
                for rep in range(self.args.repeat):
                    for mode in self.args.modes.split(","):
                        shift = (rep * 3) % len(arms)
                        for arm in arms[shift:] + arms[:shift]:
                            self.rounds.append(
                                self.round(
                                    work,
                                    front,
                                    upstream,
                                    servers,
                                    tap_dir,
                                    arm,
                                    ports,
                                    mode,
                                    rep,
                                    idle,
                                )
                            )
                for name in self.args.py_spy:
                    arm = next(a for a in arms if a.name == name)
                    self.profiled[name] = self.profile(
                        work, front, upstream, servers, tap_dir, arm, ports
                    )
                final_stats = cluster_stats(front, [a.cluster for a in built])
                envoy_log = list(front.proc.stderr)[-60:]
                server_logs = {n: list(v.proc.stderr)[-40:] for n, v in servers.items()}
            finally:
                for server in servers.values():
                    server.proc.stop()
                with contextlib.suppress(UnboundLocalError):
                    front.proc.stop()
                with contextlib.suppress(UnboundLocalError):
                    upstream.proc.stop()
                kill_children()
        return {
            "suite": self.args.suite,
            "args": vars(self.args),
            "arms": [
                {
                    "name": a.name,
                    "kind": a.kind,
                    "server": a.server,
                    "server_spec": (
                        {
                            "kind": specs[a.server].kind,
                            "flags": specs[a.server].flags,
                            "dir": str(specs[a.server].product_dir),
                        }
                        if a.server
                        else None
                    ),
                    "options": a.options.__dict__ if a.kind == "extproc" else None,
                    "tracing_percent": a.tracing_percent,
                    "baseline": a.baseline,
                }
                for a in arms
            ],
            "envoy_idle_cores": idle,
            "summary": summarize(self.rounds, arms),
            "final_stats": final_stats,
            "profiles": self.profiled,
            "envoy_log_tail": envoy_log,
            "server_log_tails": server_logs,
            "rounds": self.rounds,
        }

    def round(
        self,
        work: Path,
        front: Envoy,
        upstream: Envoy,
        servers: dict[str, Server],
        tap_dir: Path,
        arm: ArmSpec,
        ports: dict[str, int],
        mode: str,
        rep: int,
        idle_cores: float = 0.0,
    ) -> Json:
        args = self.args
        seconds = 1.0 if mode == "warmup" else args.seconds
        rate = args.rate / args.connections if mode == "fixed" else 0.0
        server = servers.get(arm.server) if arm.server else None
        cluster = f"xp-{arm.name}"
        stats0 = cluster_stats(front, [cluster])
        log0 = len(front.proc.stderr)
        taken0 = server.taken_in() if server else {}
        threads0 = threads(server.pid) if server else {}
        srv0 = proc_cpu_s(server.pid) if server else 0.0
        kids0 = children_cpu_s(server.pid) if server else 0.0
        cpu0, up0, busy0, t0 = (
            proc_cpu_s(front.pid),
            proc_cpu_s(upstream.pid),
            machine_busy_s(),
            time.monotonic(),
        )
        sampler = Sampler(front, cluster)
        load = h2load.Load.start(
            work,
            ports[arm.name],
            seconds=seconds,
            total_connections=args.connections,
            rate_per_connection=rate,
            label=f"{arm.name}-{mode}-{rep}",
        )
        by_kind = load.wait(seconds + 60)
        t_load = time.monotonic()
        maxima = sampler.stop()
        settled = self.settle(front, cluster, arm)
        t1 = time.monotonic()
        if server is not None:
            self.settle_server(server)
        cpu1, up1, busy1 = proc_cpu_s(front.pid), proc_cpu_s(upstream.pid), machine_busy_s()
        srv1 = proc_cpu_s(server.pid) if server else 0.0
        kids1 = children_cpu_s(server.pid) if server else 0.0
        threads1 = threads(server.pid) if server else {}
        taken1 = server.taken_in() if server else {}
        t_end = time.monotonic()
        stats1 = cluster_stats(front, [cluster])
        delta = {k: v - stats0.get(k, 0) for k, v in stats1.items() if v - stats0.get(k, 0)}
        requests = delta.get(f"http.{arm.name}.downstream_rq_completed", 0)
        envoy_cpu = (cpu1 - cpu0) - idle_cores * (t1 - t_load)
        server_cpu = srv1 - srv0
        latencies = [v for r in by_kind.values() for v in r.pop("_latencies_ms")]
        result: Json = {
            "arm": arm.name,
            "mode": mode,
            "rep": rep,
            "load_s": round(t_load - t0, 3),
            "settle_s": round(t1 - t_load, 3),
            "settled": settled,
            "requests": requests,
            "req_per_s": round(sum(r.get("req_per_s", 0.0) for r in by_kind.values()), 1),
            "p50_ms": h2load.percentile_ms(latencies, 0.5),
            "p99_ms": h2load.percentile_ms(latencies, 0.99),
            "envoy_cpu_us_per_request": round(envoy_cpu / max(requests, 1) * 1e6, 1),
            "upstream_cpu_us_per_request": round((up1 - up0) / max(requests, 1) * 1e6, 1),
            "not_2xx": sum(r.get("total", 0) - r.get("status_2xx", 0) for r in by_kind.values()),
            "stats": delta,
            "gauge_max": maxima,
            "other_cores": round(
                max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (up1 - up0) - server_cpu) / (t_end - t0),
                3,
            ),
        }
        if self.args.envoy_debug:
            lines = list(front.proc.stderr)[log0:]
            result["envoy_log_kinds"] = log_kinds(lines)
            keep = self.args.envoy_debug_dir
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{arm.name}-{mode}-{rep}.log").write_text("\n".join(lines))
        if server is not None:
            taken = {
                k: taken1.get(k, 0) - taken0.get(k, 0)
                for k in taken1
                if isinstance(taken1.get(k), (int, float))
            }
            transactions = taken.get("transactions", 0)
            started = delta.get(f"http.{arm.name}.ext_proc.streams_started", 0)
            result.update(
                server_cpu_s=round(server_cpu, 3),
                # the product's web page process: its own CPU, not in server_cpu_s
                server_children_cpu_s=round(kids1 - kids0, 3),
                server_children_cpu_us_per_transaction=round(
                    (kids1 - kids0) / max(transactions, 1) * 1e6, 1
                ),
                server_transactions=transactions,
                server_counts={k: v for k, v in taken.items() if v},
                server_cpu_us_per_transaction=round(server_cpu / max(transactions, 1) * 1e6, 1),
                server_transactions_per_core_s=(
                    round(transactions / server_cpu, 1) if server_cpu else None
                ),
                server_threads=thread_delta(threads0, threads1),
                streams_started=started,
                streams_failed=delta.get(f"http.{arm.name}.ext_proc.streams_failed", 0),
                lost=requests - int(transactions),
            )
        shown = (
            "requests",
            "req_per_s",
            "envoy_cpu_us_per_request",
            "server_transactions_per_core_s",
            "lost",
            "streams_failed",
            "settle_s",
            "other_cores",
        )
        print(
            f"  {arm.name:24s} {mode:6s} {rep:2d} "
            + " ".join(f"{k}={result[k]}" for k in shown if k in result)
            + (f" gauges={maxima}" if maxima else ""),
            flush=True,
        )
        return result

    def profile(
        self,
        work: Path,
        front: Envoy,
        upstream: Envoy,
        servers: dict[str, Server],
        tap_dir: Path,
        arm: ArmSpec,
        ports: dict[str, int],
    ) -> Json:
        """One more closed-loop round of `arm` with py-spy recording its server (not in the
        summary: the sampler slows the server down)."""
        assert arm.server is not None
        server = servers[arm.server]
        out = BENCH / "results" / "extproc_cost" / f"profile-{arm.name}-{int(time.time())}.txt"
        argv = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(server.pid),
            "--rate",
            "100",
            "--duration",
            str(int(self.args.seconds)),
            "--format",
            "raw",
            "--output",
            str(out),
            "--threads",
        ]
        # --native needs to pause the process for each sample
        argv.append("--native" if self.args.native else "--nonblocking")
        spy = Proc(argv, "py-spy")
        result = self.round(work, front, upstream, servers, tap_dir, arm, ports, "profile", 0)
        spy.popen.wait(60)
        result["profile_file"] = str(out)
        result["py_spy_log"] = list(spy.stderr)[-5:]
        return result

    def settle(self, front: Envoy, cluster: str, arm: ArmSpec) -> bool:
        """Wait until Envoy has closed the arm's side streams, all but at most one per client
        connection: h2load cuts the requests in flight when its time is up, and their
        streams wait for the deferred close (a handful, whose cost is negligible)."""
        if arm.kind != "extproc":
            return True
        if arm.options.google_grpc:  # no cluster: wait out the deferred close
            time.sleep(5.5)
            return True
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            stats = cluster_stats(front, [cluster])
            if stats.get(f"cluster.{cluster}.upstream_rq_active", 0) <= self.args.connections:
                return True
            time.sleep(0.1)
        return False

    def settle_server(self, server: Server) -> None:
        """Wait until the server's count stops moving (its writers done)."""
        last, since = -1.0, time.monotonic()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            now_count = float(server.taken_in().get("transactions", 0))
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since > 0.3:
                return
            time.sleep(0.1)


# --- summary ------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarize(rounds: list[Json], arms: list[ArmSpec]) -> Json:
    out: Json = {}
    for mode in sorted({r["mode"] for r in rounds}):
        per: Json = {}
        for arm in arms:
            mine = [r for r in rounds if r["mode"] == mode and r["arm"] == arm.name]
            if not mine:
                continue
            base = {r["rep"]: r for r in rounds if r["mode"] == mode and r["arm"] == arm.baseline}
            entry: Json = {}
            for key in ("req_per_s", "p50_ms", "p99_ms", "envoy_cpu_us_per_request"):
                entry[key] = median([r[key] for r in mine])
                entry[key + "_ratio"] = median(
                    [
                        r[key] / base[r["rep"]][key]
                        for r in mine
                        if r["rep"] in base and r[key] and base[r["rep"]][key]
                    ]
                )
            notap = {r["rep"]: r for r in rounds if r["mode"] == mode and r["arm"] == "notap"}
            entry["envoy_cpu_ratio_to_plain_notap"] = median(
                [
                    r["envoy_cpu_us_per_request"] / notap[r["rep"]]["envoy_cpu_us_per_request"]
                    for r in mine
                    if r["rep"] in notap
                ]
            )
            entry["other_cores"] = median([r["other_cores"] for r in mine])
            if "server_cpu_s" in mine[0]:
                for key in ("server_transactions_per_core_s", "server_cpu_us_per_transaction"):
                    entry[key] = median([r[key] for r in mine])
                entry["requests"] = sum(r["requests"] for r in mine)
                entry["lost"] = sum(r["lost"] for r in mine)
                entry["streams_failed"] = sum(r["streams_failed"] for r in mine)
                entry["gauge_max"] = {
                    g: max(r["gauge_max"].get(g, 0) for r in mine) for g in GAUGES
                }
            per[arm.name] = entry
        out[mode] = per
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", default="envoy")
    parser.add_argument("--arms", default="", help="only these arms (comma-separated), plus no tap")
    parser.add_argument("--product", action="append", default=[], help="NAME=DIR")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="closed,fixed")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--py-spy", action="append", default=[], help="profile this arm's server")
    parser.add_argument("--native", action="store_true", help="py-spy --native")
    parser.add_argument(
        "--envoy-debug", default="", help="Envoy log components at debug, e.g. ext_proc,grpc"
    )
    parser.add_argument(
        "--envoy-debug-dir", type=Path, default=None, help="keep each round's debug lines here"
    )
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep Envoy's final stats and the log tails"
    )
    args = parser.parse_args()
    SERVER_ENV.update(item.split("=", 1) for item in args.server_env)
    started = time.monotonic()
    result = Run(args).main()
    result["duration_s"] = round(time.monotonic() - started, 1)
    result["load_average"] = os.getloadavg()
    out = args.out or BENCH / "results" / "extproc_cost" / f"{args.suite}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.keep_logs:  # keep results small enough to commit
        for key in ("final_stats", "envoy_log_tail", "server_log_tails"):
            result.pop(key, None)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    for mode, per in result["summary"].items():
        print(f"[{mode}]")
        for name, entry in per.items():
            print(
                f"  {name:24s} cpu/req {entry['envoy_cpu_us_per_request']!s:>7} "
                f"x{entry['envoy_cpu_us_per_request_ratio']} "
                f"(plain x{entry['envoy_cpu_ratio_to_plain_notap']}) "
                f"req/s {entry['req_per_s']} "
                + (
                    f"srv tx/core-s {entry['server_transactions_per_core_s']} "
                    f"lost {entry['lost']}/{entry['requests']} failed {entry['streams_failed']} "
                    f"max {entry['gauge_max']}"
                    if "lost" in entry
                    else ""
                )
            )


if __name__ == "__main__":
    main()
