"""The ext_proc phase: one Envoy, three arms (no tap, tap filter, ext_proc), side by side.

Started once for the whole phase, all on 127.0.0.1: the upstream Envoy, the emulator
(``tap-emulator serve``, the real product) into a fresh tmpfs, and the Envoy under test
(``--concurrency 1``) with one listener per arm (`envoys`). Every arm is first warmed up for
a second; the ext_proc arm is then checked: if the emulator wrote nothing for its warm-up
requests (it does not serve ``ExternalProcessor``, or every stream failed), the arm is
reported as not available with Envoy's counters, and not measured.

Then ``repeat`` times: a closed-loop round and a fixed-rate round of every arm, the order
of the arms rotating each time. A round is the same h2load mix against one listener; only
that listener carries traffic, so the Envoy's CPU over the round (``/proc/<pid>/stat``) is
that arm's, divided by the requests its listener completed (Envoy's own counter). The
emulator's CPU is read over each ext_proc round plus the wait for its files (at most
``DRAIN_TIMEOUT_S``). Ratios are the medians of the per-round ratios to the no-tap round
of the same repeat and mode.

Loss per ext_proc round (requests its listener completed minus files the emulator wrote
for them) and over the whole phase, warm-up included: transactions sent, files on disk at
the end, the streams the emulator opened, what its own metrics count as dropped, rejected,
refused, failed or lost, and Envoy's side (streams failed, failure-mode-allowed, overflow).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from procs import Proc, machine_busy_s, proc_cpu_s

from extproc import envoys, h2load

Json = dict[str, Any]
START_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 10.0
WARMUP_S = 1.0
IDLE_S = 2.0
MODES = ("closed", "fixed")
STATS_FILTER = r"^(http\.(notap|tap|extproc)\.|cluster\.(emulator|upstream)\.)"
EXTPROC_OUTCOMES = "tap_emulator_extproc_transactions_total"
PROCESS_METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
LOSS_WORDS = re.compile(r"dropped|rejected|refused|lost|abandon|fail")
#: Goals the ext_proc tap is judged against.
ENVOY_CPU_RATIO_GOAL = 1.5
EMULATOR_TX_PER_CORE_GOAL = 3000.0


class Emulator(Protocol):
    port: int
    metrics_port: int | None

    @property
    def pid(self) -> int: ...


class Runner(Protocol):
    """What the phase needs of the benchmark runner (bench.Bench)."""

    scratch: Any

    def start_emulator(self, directory: Path) -> Any: ...


@dataclass
class Settings:
    seconds: float = 5.0
    repeat: int = 3
    rate: float = 500.0
    connections: int = 10

    def describe(self) -> Json:
        return {
            "round_seconds": self.seconds,
            "repeat": self.repeat,
            "fixed_rate_req_per_s": self.rate,
            "connections": self.connections,
            "mix": {
                kind.name: {
                    "connections": h2load.connections(self.connections, kind),
                    "http": "2" if kind.http2 else "1.1",
                    "request_body_bytes": len(kind.body),
                }
                for kind in h2load.KINDS
            },
            "upstream_answer_bytes": {
                "get": envoys.GET_BODY_BYTES,
                "post": len(envoys.POST_ANSWER),
                "grpc": len(envoys.GRPC_ANSWER) + 5,
            },
        }


# --- Envoy ------------------------------------------------------------------------------


def envoy_binary() -> str:
    beside = Path(sys.executable).with_name("envoy")
    return str(beside) if beside.exists() else (shutil.which("envoy") or "envoy")


@dataclass
class Envoy:
    proc: Proc
    admin: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=10) as response:
            return str(response.read().decode())

    def listener_ports(self) -> dict[str, int]:
        statuses = json.loads(self.get("/listeners?format=json"))["listener_statuses"]
        return {
            s["name"]: int(s["local_address"]["socket_address"]["port_value"])
            for s in statuses
            if "socket_address" in s["local_address"]
        }

    def stats(self) -> dict[str, int]:
        text = self.get("/stats?filter=" + urllib.request.quote(STATS_FILTER))
        found: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                found[name] = int(value)
        return found


def start_envoy(config: Json, work_dir: Path, name: str) -> Envoy:
    path = work_dir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    admin_path = work_dir / f"{name}-admin.txt"
    argv = [
        envoy_binary(),
        "-c",
        str(path),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--admin-address-path",
        str(admin_path),
        "-l",
        "warning",
    ]
    proc = Proc(argv, f"envoy-{name}")

    def admin_ready() -> str | None:
        with contextlib.suppress(OSError):
            text = admin_path.read_text().strip()
            if text:
                return text
        return None

    admin = proc.wait_for(admin_ready, START_TIMEOUT_S, "admin address")
    envoy = Envoy(proc, admin)
    wanted = {listener["name"] for listener in config["static_resources"]["listeners"]}

    def listening() -> bool:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return wanted <= {*envoy.listener_ports(), "answers"}
        return False

    proc.wait_for(listening, START_TIMEOUT_S, "listeners")
    return envoy


def probe_process(port: int) -> str:
    """How the emulator answers an empty ExternalProcessor/Process stream: its status."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(PROCESS_METHOD)
        try:
            for _ in call(iter(()), timeout=5):
                pass
        except grpc.RpcError as error:
            return f"{error.code().name} ({error.details()})"
    return "OK"


# --- the emulator's metrics ---------------------------------------------------------------


def scrape_all(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[key] = float(value)
    return samples


def files_written(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("tap_emulator_files_written_total"))


def counted_lost(samples: dict[str, float]) -> dict[str, float]:
    """The emulator's counters of transactions it did not write, non-zero only."""
    found: dict[str, float] = {}
    for key, value in samples.items():
        name = key.split("{", 1)[0]
        if not value or not name.endswith("_total"):
            continue
        if name == "tap_emulator_streams_ended_total":
            if 'outcome="ok"' not in key:
                found[key] = value
        elif LOSS_WORDS.search(name):
            found[key] = value
    return found


def count_files(directory: Path, suffix: str = ".pb") -> int:
    with os.scandir(directory) as entries:
        return sum(1 for entry in entries if entry.name.endswith(suffix))


def clear_directory(directory: Path) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                Path(entry.path).unlink()


# --- the phase ----------------------------------------------------------------------------


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_cpu_cores(pid: int, seconds: float) -> float:
    """A process's CPU per second while nothing is sent to it: what every round also holds."""
    before = proc_cpu_s(pid)
    time.sleep(seconds)
    return round((proc_cpu_s(pid) - before) / seconds, 4)


def median(values: list[float]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


class ExtProcPhase:
    def __init__(self, runner: Runner, settings: Settings) -> None:
        self.runner = runner
        self.settings = settings
        self.rounds: list[Json] = []
        self.ports: dict[str, int] = {}
        self.availability: Json = {}

    def run(self) -> Json:
        if h2load.binary() is None:
            return {
                "available": False,
                "reason": "h2load not found (apt-get install nghttp2-client)",
            }
        scratch = self.runner.scratch
        with (
            scratch.directory() as work,
            scratch.directory() as tap_dir,
            scratch.directory() as emulator_dir,
        ):
            return self._run(work, tap_dir, emulator_dir)

    def _run(self, work: Path, tap_dir: Path, emulator_dir: Path) -> Json:
        started = time.monotonic()
        upstream = start_envoy(envoys.upstream_bootstrap(work / "answers.sock"), work, "upstream")
        emulator = self.runner.start_emulator(emulator_dir)
        front = start_envoy(
            envoys.front_bootstrap(upstream.listener_ports()["upstream"], emulator.port, tap_dir),
            work,
            "front",
        )
        self.ports = front.listener_ports()
        try:
            idle_cores = idle_cpu_cores(front.pid, IDLE_S)
            self._warm_up(work, front, emulator, emulator_dir)
            arms = [a for a in envoys.ARMS if a != "extproc" or self.availability["available"]]
            for rep in range(self.settings.repeat):
                for mode in MODES:
                    shift = rep % len(arms)
                    for arm in arms[shift:] + arms[:shift]:
                        self.rounds.append(
                            self._round(work, front, upstream, emulator, tap_dir, arm, mode, rep)
                        )
            loss = self._loss(front, emulator, emulator_dir)
        finally:
            front.proc.stop()
            emulator_status = emulator.proc.stop()
            upstream.proc.stop()
        return {
            "available": True,
            "settings": self.settings.describe(),
            "duration_s": round(time.monotonic() - started, 1),
            "envoy_idle_cores": idle_cores,
            "extproc_arm": self.availability,
            "emulator_exit_status": emulator_status,
            "summary": summarize(self.rounds, self.availability["available"]),
            "loss": loss,
            "goals": goals(self.rounds, self.availability["available"]),
            "rounds": self.rounds,
        }

    def _warm_up(self, work: Path, front: Envoy, emulator: Emulator, emulator_dir: Path) -> None:
        for arm in envoys.ARMS:
            print(f"  ext_proc: warm-up, {arm}", flush=True)
            load = h2load.Load.start(
                work,
                self.ports[arm],
                seconds=WARMUP_S,
                total_connections=self.settings.connections,
                rate_per_connection=0,
                label=f"warmup-{arm}",
            )
            sent = sum(r.get("succeeded", 0) for r in load.wait(WARMUP_S + 30).values())
            if arm == "extproc":
                self.availability = self._check_extproc(front, emulator, emulator_dir, sent)
                print(f"    ext_proc arm: {self.availability}", flush=True)

    def _check_extproc(
        self, front: Envoy, emulator: Emulator, emulator_dir: Path, sent: int
    ) -> Json:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        written = 0
        while time.monotonic() < deadline:
            written = count_files(emulator_dir)
            if written >= sent:
                break
            time.sleep(0.2)
        stats = front.stats()
        ext = {
            k.removeprefix("http.extproc.ext_proc."): v
            for k, v in stats.items()
            if ".ext_proc." in k
        }
        available = written > 0
        result: Json = {
            "available": available,
            "warmup_requests": sent,
            "warmup_files_written": written,
            "envoy_ext_proc": ext,
        }
        if not available:
            answer = probe_process(emulator.port)
            result["process_probe"] = answer
            result["reason"] = (
                f"the emulator wrote no file for {sent} requests; Envoy started "
                f"{ext.get('streams_started', 0)} ext_proc streams, "
                f"{ext.get('streams_failed', 0)} failed, "
                f"{ext.get('failure_mode_allowed', 0)} let through by failure_mode_allow; "
                f"a Process call to the emulator ends with {answer}"
            )
        return result

    def _round(
        self,
        work: Path,
        front: Envoy,
        upstream: Envoy,
        emulator: Emulator,
        tap_dir: Path,
        arm: str,
        mode: str,
        rep: int,
    ) -> Json:
        settings = self.settings
        rate_per_connection = settings.rate / settings.connections if mode == "fixed" else 0.0
        print(f"  ext_proc: {arm}, {mode}, repeat {rep}", flush=True)
        if arm == "tap":
            clear_directory(tap_dir)
        measured_emulator = arm == "extproc"
        stats0 = front.stats()
        emu0 = scrape_all(emulator.metrics_port or 0) if measured_emulator else {}
        emu_cpu0 = proc_cpu_s(emulator.pid)
        cpu0, up0, kids0, busy0, t0 = (
            proc_cpu_s(front.pid),
            proc_cpu_s(upstream.pid),
            children_cpu_s(),
            machine_busy_s(),
            time.monotonic(),
        )
        load = h2load.Load.start(
            work,
            self.ports[arm],
            seconds=settings.seconds,
            total_connections=settings.connections,
            rate_per_connection=rate_per_connection,
            label=f"{arm}-{mode}-{rep}",
        )
        by_kind = load.wait(settings.seconds + 60)
        cpu1, up1, kids1, busy1, t1 = (
            proc_cpu_s(front.pid),
            proc_cpu_s(upstream.pid),
            children_cpu_s(),
            machine_busy_s(),
            time.monotonic(),
        )
        stats1 = front.stats()
        elapsed = t1 - t0
        requests = stats1.get(f"http.{arm}.downstream_rq_completed", 0) - stats0.get(
            f"http.{arm}.downstream_rq_completed", 0
        )
        latencies = [v for r in by_kind.values() for v in r.pop("_latencies_ms")]
        envoy_cpu = cpu1 - cpu0
        run: Json = {
            "arm": arm,
            "mode": mode,
            "rep": rep,
            "window_s": round(elapsed, 3),
            "requests": requests,
            "req_per_s": round(sum(r.get("req_per_s", 0.0) for r in by_kind.values()), 1),
            "p50_ms": h2load.percentile_ms(latencies, 0.5),
            "p99_ms": h2load.percentile_ms(latencies, 0.99),
            "envoy_cpu_s": round(envoy_cpu, 3),
            "envoy_cores": round(envoy_cpu / elapsed, 3),
            "envoy_cpu_us_per_request": round(envoy_cpu / max(requests, 1) * 1e6, 1),
            "upstream_cpu_us_per_request": round((up1 - up0) / max(requests, 1) * 1e6, 1),
            "client_cores": round((kids1 - kids0) / elapsed, 3),
            "by_kind": {
                name: {k: v for k, v in r.items() if k != "raw_tail"} for name, r in by_kind.items()
            },
            "not_2xx": sum(r.get("total", 0) - r.get("status_2xx", 0) for r in by_kind.values()),
            "envoy_stats": {
                k: v - stats0.get(k, 0) for k, v in stats1.items() if v - stats0.get(k, 0)
            },
        }
        ours = envoy_cpu + (up1 - up0) + (kids1 - kids0)
        if arm == "tap":
            run["tap_files"] = count_files(tap_dir)
        if measured_emulator:
            sent = run["envoy_stats"].get("http.extproc.ext_proc.streams_started", requests)
            emu1 = self._drain(emulator, files_written(emu0) + sent)
            emu_cpu = proc_cpu_s(emulator.pid) - emu_cpu0
            written = files_written(emu1) - files_written(emu0)
            ours += emu_cpu
            run.update(
                emulator_cpu_s=round(emu_cpu, 3),
                emulator_cores=round(emu_cpu / elapsed, 3),
                emulator_files=int(written),
                emulator_cpu_us_per_transaction=round(emu_cpu / max(written, 1) * 1e6, 1),
                emulator_transactions_per_core_s=round(written / emu_cpu, 1) if emu_cpu else None,
                lost=requests - int(written),
            )
        run["other_cores"] = round(max(0.0, (busy1 - busy0) - ours) / elapsed, 3)
        shown = ("req_per_s", "p50_ms", "p99_ms", "envoy_cpu_us_per_request", "not_2xx")
        extra = ("emulator_files", "emulator_transactions_per_core_s", "tap_files", "other_cores")
        print(f"    { {k: run.get(k) for k in shown + extra if k in run} }", flush=True)
        return run

    def _drain(self, emulator: Emulator, files_expected: float) -> dict[str, float]:
        """The emulator's metrics once it has written `files_expected` or stopped writing."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        last, last_change = -1.0, time.monotonic()
        while True:
            samples = scrape_all(emulator.metrics_port or 0)
            written = files_written(samples)
            now = time.monotonic()
            if written != last:
                last, last_change = written, now
            if written >= files_expected or now - last_change > 1.0 or now > deadline:
                return samples
            time.sleep(0.1)

    def _loss(self, front: Envoy, emulator: Emulator, emulator_dir: Path) -> Json:
        if not self.availability.get("available"):
            return {"available": False}
        stats = front.stats()
        samples = self._drain(emulator, float("inf"))
        sent = stats.get("http.extproc.downstream_rq_completed", 0)
        written = count_files(emulator_dir)
        counted = counted_lost(samples)
        envoy_side = {
            k: v
            for k, v in stats.items()
            if v
            and (
                k.endswith(
                    ("streams_failed", "failure_mode_allowed", "_overflow", "streams_started")
                )
            )
        }
        return {
            "available": True,
            "transactions_sent": sent,
            "files_written": written,
            "lost": sent - written,
            # where the difference went: streams the emulator saw, files its metric counts
            "emulator_streams_opened": sum(
                v
                for k, v in samples.items()
                if k.startswith("tap_emulator_streams_opened_total") and 'source="ext_proc"' in k
            ),
            "emulator_files_written_metric": files_written(samples),
            # side streams gRPC core ended before a handler got them (its load shedding)
            "emulator_grpc_calls_unhandled": samples.get("tap_emulator_grpc_calls_unhandled", 0.0),
            "counted_lost_by_emulator": counted,
            "counted_lost_total": sum(counted.values()),
            # written, but how complete (an aborted transaction is written as far as it got)
            "emulator_outcomes": {
                k: v for k, v in samples.items() if k.startswith(EXTPROC_OUTCOMES) and v
            },
            "envoy": envoy_side,
        }


# --- summary ------------------------------------------------------------------------------


def summarize(rounds: list[Json], extproc_available: bool) -> Json:
    """Per mode and arm: medians, and medians of per-round ratios to the same repeat's no tap."""
    out: Json = {}
    for mode in MODES:
        base = {r["rep"]: r for r in rounds if r["mode"] == mode and r["arm"] == "notap"}
        arms: Json = {}
        for arm in envoys.ARMS:
            mine = [r for r in rounds if r["mode"] == mode and r["arm"] == arm]
            if not mine:
                arms[arm] = {"available": False}
                continue
            entry: Json = {"available": True, "rounds": len(mine)}
            for key in ("req_per_s", "p50_ms", "p99_ms", "envoy_cpu_us_per_request"):
                entry[key] = median([r[key] for r in mine])
                ratios = [
                    r[key] / base[r["rep"]][key]
                    for r in mine
                    if r["rep"] in base and r[key] is not None and base[r["rep"]][key]
                ]
                entry[f"{key}_ratio"] = median(ratios)
            entry["not_2xx"] = sum(r["not_2xx"] for r in mine)
            if arm == "extproc":
                for key in (
                    "emulator_transactions_per_core_s",
                    "emulator_cpu_us_per_transaction",
                    "emulator_cores",
                ):
                    entry[key] = median([r[key] for r in mine])
                entry["sent"] = sum(r["requests"] for r in mine)
                entry["lost"] = sum(r["lost"] for r in mine)
            if arm == "tap":
                entry["tap_files_per_request"] = median(
                    [r["tap_files"] / max(r["requests"], 1) for r in mine]
                )
            entry["other_cores"] = median([r["other_cores"] for r in mine])
            arms[arm] = entry
        out[mode] = arms
    out["extproc_available"] = extproc_available
    return out


def goals(rounds: list[Json], extproc_available: bool) -> Json:
    """True/False per goal, or None where the ext_proc arm could not be measured."""
    if not extproc_available:
        return {
            "envoy_cpu_per_request_le_1.5x_no_tap": None,
            "emulator_ge_3000_transactions_per_core_s": None,
            "nothing_lost_at_fixed_rate": None,
        }
    summary = summarize(rounds, True)
    ratios = [summary[mode]["extproc"]["envoy_cpu_us_per_request_ratio"] for mode in MODES]
    per_core = summary["closed"]["extproc"]["emulator_transactions_per_core_s"]
    return {
        "envoy_cpu_per_request_le_1.5x_no_tap": all(
            r is not None and r <= ENVOY_CPU_RATIO_GOAL for r in ratios
        ),
        "emulator_ge_3000_transactions_per_core_s": per_core is not None
        and per_core >= EMULATOR_TX_PER_CORE_GOAL,
        # The load it sustains: the fixed-rate rounds (the closed loop saturates on purpose;
        # its loss is reported beside, in the summary and `loss`).
        "nothing_lost_at_fixed_rate": summary["fixed"]["extproc"]["lost"] == 0,
    }
