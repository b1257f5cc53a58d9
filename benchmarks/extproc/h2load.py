"""The ext_proc benchmark's load client: nghttp2's h2load, one process per kind of request.

The mix is three kinds sent at once, each by its own h2load process with its own
connections: a small GET and a 16 KiB POST over HTTP/1.1 (keep-alive, one request in
flight per connection), and a gRPC unary call over HTTP/2 (prior knowledge, one stream in
flight per connection). Closed loop: every connection sends its next request as soon as the
last one is answered. Fixed rate: ``--rps`` per connection, so the offered rate is fixed
whatever the proxy does. Each process logs every request (``--log-file``: start, status,
microseconds to the end of the response), from which the latency percentiles come.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.envoys import GRPC_PREFIX

Json = dict[str, Any]
POST_BODY_BYTES = 16 * 1024
#: One length-prefixed gRPC request message of 64 bytes.
GRPC_REQUEST = b"\x00\x00\x00\x00\x40" + bytes(64)


@dataclass(frozen=True)
class Kind:
    """One kind of request of the mix and its share of the connections."""

    name: str
    path: str
    http2: bool
    body: bytes
    headers: tuple[str, ...]
    #: connections of this kind per 10 (closed loop and fixed rate alike)
    share_of_10: int


KINDS = (
    Kind("get", "/get", False, b"", (), 5),
    Kind(
        "post",
        "/post",
        False,
        b"p" * POST_BODY_BYTES,
        ("content-type: application/octet-stream",),
        3,
    ),
    Kind(
        "grpc",
        f"{GRPC_PREFIX}Unary",
        True,
        GRPC_REQUEST,
        ("content-type: application/grpc", "te: trailers"),
        2,
    ),
)

FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def binary() -> str | None:
    return shutil.which("h2load")


def connections(total: int, kind: Kind) -> int:
    """This kind's connections out of `total` (at least one each)."""
    return max(1, round(total * kind.share_of_10 / 10))


@dataclass
class Load:
    """The h2load processes of one round, started together."""

    procs: list[tuple[Kind, subprocess.Popen[str], Path]]

    @classmethod
    def start(
        cls,
        work_dir: Path,
        port: int,
        *,
        seconds: float,
        total_connections: int,
        rate_per_connection: float,
        label: str,
    ) -> Load:
        found = binary()
        if found is None:
            raise FileNotFoundError("h2load not found: apt-get install nghttp2-client")
        procs = []
        for kind in KINDS:
            body = work_dir / f"body-{kind.name}.bin"
            if kind.body and not body.exists():
                body.write_bytes(kind.body)
            log = work_dir / f"{label}-{kind.name}.log"
            argv = [
                found,
                "-t",
                "1",
                "-c",
                str(connections(total_connections, kind)),
                "-m",
                "1",
                "-D",
                f"{seconds:g}",
                "--log-file",
                str(log),
            ]
            if not kind.http2:
                argv.append("--h1")
            if rate_per_connection > 0:
                argv += ["--rps", f"{rate_per_connection:g}"]
            if kind.body:
                argv += ["-d", str(body)]
            for header in kind.headers:
                argv += ["-H", header]
            argv.append(f"http://127.0.0.1:{port}{kind.path}")
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            procs.append((kind, proc, log))
        return cls(procs)

    def wait(self, timeout_s: float) -> dict[str, Json]:
        """Each kind's summary, and its latencies (ms) under ``"_latencies_ms"``."""
        results: dict[str, Json] = {}
        try:
            for kind, proc, log in self.procs:
                output, _ = proc.communicate(timeout=timeout_s)
                summary = parse_summary(output)
                summary["exit_status"] = proc.returncode
                summary["_latencies_ms"] = read_log_ms(log)
                with contextlib.suppress(OSError):
                    log.unlink()
                results[kind.name] = summary
        finally:
            self.kill()
        return results

    def kill(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def parse_summary(output: str) -> Json:
    """h2load's summary lines: duration, req/s, request outcomes and status classes."""
    summary: Json = {"raw_tail": output.strip().splitlines()[-12:]}
    finished = FINISHED.search(output)
    if finished:
        value, unit = float(finished.group(1)), finished.group(2)
        summary["seconds"] = value / 1000 if unit == "ms" else value
        summary["req_per_s"] = float(finished.group(3))
    requests = REQUESTS.search(output)
    if requests:
        names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        summary.update(zip(names, (int(x) for x in requests.groups()), strict=True))
    status = STATUS.search(output)
    if status:
        names = ("status_2xx", "status_3xx", "status_4xx", "status_5xx")
        summary.update(zip(names, (int(x) for x in status.groups()), strict=True))
    return summary


def read_log_ms(log: Path) -> list[float]:
    """Durations (ms) of the requests answered 2xx, from an h2load --log-file."""
    values = []
    with contextlib.suppress(OSError), log.open() as lines:
        for line in lines:
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1].startswith("2"):
                values.append(int(fields[2]) / 1000)
    return values


def percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
