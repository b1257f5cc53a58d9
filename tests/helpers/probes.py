"""What a kubelet, a proxy and an operator would ask a running emulator, each with a deadline:
`/healthz` and `/readyz`, `grpc.health.v1.Health/Check`, a counter from `/metrics`, and a
signal followed by the time it took the process to exit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.emulator import EmulatorProcess, metric, scrape
from tests.helpers.namespaces import innermost_pid


def http_get(url: str, timeout: float = 2.0) -> tuple[int | None, str]:
    """(status, body); status None when no answer came within `timeout` seconds."""
    try:
        with urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except HTTPError as error:
        return error.code, error.read().decode()
    except (URLError, TimeoutError, ConnectionError, OSError):
        return None, ""


def health_check(target: str, timeout: float = 2.0, service: str = "") -> str:
    """SERVING / NOT_SERVING, or the gRPC status code's name of a failed check."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def counter(emulator: EmulatorProcess, name: str, **labels: str) -> float:
    return metric(scrape(emulator.metrics_url), name, **labels)


def server_pid(emulator: EmulatorProcess) -> int:
    """The server's own pid (inside `unshare`, when it runs in namespaces of its own)."""
    return innermost_pid(emulator.pid)


def send_signal(emulator: EmulatorProcess, signum: int = signal.SIGTERM) -> None:
    os.kill(server_pid(emulator), signum)


def exit_after(emulator: EmulatorProcess, since: float, timeout: float) -> tuple[int | None, float]:
    """(exit status or None if still running, seconds from `since` to the exit)."""
    assert emulator.process is not None
    try:
        status = emulator.process.wait(max(0.0, since + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - since
    return status, time.monotonic() - since


def log_has(emulator: EmulatorProcess, text: str) -> bool:
    return any(text in line for line in list(emulator.log_lines))
