"""The pieces the ext_proc fault tests and measurements share: the bulk backend process, an
Envoy running the tap-filter chart as rendered (its route with no timeout, so a stall shows as
a stall), and readers for the emulator's and Envoy's counters of the ext_proc side streams.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.chart_bootstrap import (
    Backend,
    RunningEnvoy,
    Workload,
    chart_bootstrap,
    counters,
    running_envoy,
)
from tests.helpers.emulator import metric, scrape
from tests.helpers.paths import HELPERS, REPO

Obj = dict[str, Any]

WORKLOAD = Workload("demo-ns")
ANALYSIS_CLUSTER = "outbound|9000||tap-emulator.analysis-emulator.svc.cluster.local"
# The capture point every test sends through (the chart renders inbound and outbound alike).
LISTENER = "inbound"
# A route timeout of 0 turns it off: nothing cuts a held-back transfer short.
NO_ROUTE_TIMEOUT = "0s"


@dataclass
class HelperProcess:
    """A helper script in its own process that printed `{"port": N}` once it listened."""

    process: subprocess.Popen[str]
    port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def helper_process(script: str, *args: str) -> Iterator[HelperProcess]:
    process = subprocess.Popen(
        [sys.executable, str(HELPERS / script), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    running = HelperProcess(process, 0)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"{script} exited before listening (status {process.poll()})"
        running.port = int(json.loads(line)["port"])
        yield running
    finally:
        running.stop()


def capture_bootstrap(
    scratch: Path,
    backend_port: int,
    emulator: tuple[str, int],
    values: Mapping[str, Any] | None = None,
) -> Obj:
    """The chart (default values unless told) as a sidecar of WORKLOAD runs it, routing every
    path to the bulk backend with no route timeout."""
    scratch.mkdir(parents=True, exist_ok=True)
    return chart_bootstrap(
        values,
        scratch=scratch,
        backends=[Backend("bulk", backend_port, timeout=NO_ROUTE_TIMEOUT)],
        emulator=emulator,
        workload=WORKLOAD,
    )


@contextlib.contextmanager
def capturing_envoy(
    envoy: Path,
    scratch: Path,
    backend_port: int,
    emulator: tuple[str, int],
    values: Mapping[str, Any] | None = None,
) -> Iterator[RunningEnvoy]:
    bootstrap = capture_bootstrap(scratch / "render", backend_port, emulator, values)
    with running_envoy(envoy, bootstrap, scratch / "envoy") as running:
        yield running


def address(target: str) -> tuple[str, int]:
    """`host:port` as a tuple."""
    host, port = target.rsplit(":", 1)
    return host, int(port)


def prefixed(admin: str, prefix: str) -> dict[str, int]:
    return {name.removeprefix(prefix): value for name, value in counters(admin, prefix).items()}


def ext_proc_stats(admin: str, listener: str = LISTENER) -> dict[str, int]:
    """The ext_proc filter's counters of one listener (streams_started, streams_failed, ...)."""
    return prefixed(admin, f"http.{listener}.ext_proc.")


def analysis_cluster_stats(admin: str, cluster: str = ANALYSIS_CLUSTER) -> dict[str, int]:
    """Counters and gauges of the cluster the side streams use."""
    return prefixed(admin, f"cluster.{cluster}.")


@dataclass(frozen=True)
class ExtProcCounts:
    """What the emulator counted of its ext_proc streams and transactions."""

    opened: float
    ended: dict[str, float]  # by outcome
    complete: float
    incomplete: float
    dropped: dict[str, float]  # by reason

    @property
    def lost_streams(self) -> float:
        """Streams that ended before their transaction did (cut, or reset by Envoy)."""
        return sum(value for outcome, value in self.ended.items() if outcome != "ok")


STREAM_OUTCOMES = ("ok", "cancelled", "unfinished", "shutdown", "internal", "idle")
DROP_REASONS = ("queue_full", "assembly_full", "shutdown")


def extproc_counts(metrics_url: str) -> ExtProcCounts:
    samples = scrape(metrics_url)
    source = {"source": "ext_proc"}
    return ExtProcCounts(
        opened=metric(samples, "tap_emulator_streams_opened_total", **source),
        ended={
            outcome: metric(samples, "tap_emulator_streams_ended_total", outcome=outcome, **source)
            for outcome in STREAM_OUTCOMES
        },
        complete=metric(samples, "tap_emulator_extproc_transactions_total", outcome="complete"),
        incomplete=metric(samples, "tap_emulator_extproc_transactions_total", outcome="incomplete"),
        dropped={
            reason: metric(
                samples, "tap_emulator_extproc_transactions_dropped_total", reason=reason
            )
            for reason in DROP_REASONS
        },
    )
