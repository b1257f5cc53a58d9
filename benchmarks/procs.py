"""The benchmark's processes, /proc readings and scratch tmpfs, shared by every phase.

Every child a phase starts is a `Proc` (JSON lines on stdout, stderr kept for diagnosis),
listed in `CHILDREN` so the runner can end each one by its own pid when it stops or fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHM = Path("/dev/shm")
CLK_TCK = os.sysconf("SC_CLK_TCK")
Json = dict[str, Any]


# --- /proc ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory_kib(pid: int) -> dict[str, int]:
    found = {"rss_kib": 0, "hwm_kib": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found["rss_kib"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                found["hwm_kib"] = int(line.split()[1])
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


# --- processes --------------------------------------------------------------------------


CHILDREN: list[Proc] = []


def kill_children() -> None:
    """End every process this runner started that is still running (by its own pid)."""
    for proc in CHILDREN:
        if proc.popen.poll() is None:
            proc.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)


class Proc:
    """A child process whose stdout is JSON lines and whose stderr is kept for diagnosis."""

    def __init__(
        self, argv: list[str], name: str, env: dict[str, str] | None = None, product: bool = False
    ) -> None:
        self.name = name
        self.events: list[Json] = []
        self.stderr: deque[str] = deque(maxlen=400)
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            cwd=PRODUCT[0] if product else REPO,
            env=env or child_env(product),
        )
        self.pid = self.popen.pid
        CHILDREN.append(self)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._cond:
                self.stderr.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, test: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = test()
                if found:
                    return found
                if self.popen.poll() is not None and not found:
                    # one last look after the pipes drain
                    self._cond.wait(0.2)
                    found = test()
                    if found:
                        return found
                    raise RuntimeError(
                        f"{self.name} exited ({self.popen.returncode}) {what}: "
                        + " | ".join(list(self.stderr)[-8:])
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.name}: no {what} in {timeout}s: "
                        + " | ".join(list(self.stderr)[-8:])
                    )
                self._cond.wait(min(left, 0.5))

    def event(self, name: str, timeout: float, after: int = 0) -> Json:
        def find() -> Json | None:
            for event in self.events[after:]:
                if event.get("event") == name:
                    return event
            return None

        result: Json = self.wait_for(find, timeout, f"'{name}' event")
        return result

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


#: Where the servers' `tap_emulator` comes from: this repository, or `--product-dir` (for
#: example a `git archive` of another commit, to compare two versions in one run).
PRODUCT: list[Path] = [REPO]


def child_env(product: bool = False) -> dict[str, str]:
    """The product under test (`product`) imports `tap_emulator` from PRODUCT; the harness's
    own processes (ceilings, load generators) from this repository, whatever is measured."""
    env = dict(os.environ)
    first = [str(PRODUCT[0])] if product else []
    env["PYTHONPATH"] = os.pathsep.join(
        [*first, str(HERE), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --- tmpfs ------------------------------------------------------------------------------


class Scratch:
    """Fresh tmpfs mounts (or /dev/shm directories when mounting is not allowed)."""

    def __init__(self) -> None:
        self.root = SHM / f"tap-bench-{os.getpid()}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.counter = itertools.count(1)
        self.mounting = True

    @contextlib.contextmanager
    def directory(self) -> Iterator[Path]:
        path = self.root / f"p{next(self.counter)}"
        path.mkdir()
        mounted = False
        if self.mounting:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=12g,mode=0755", "tmpfs", str(path)],
                capture_output=True,
                check=False,
            )
            mounted = result.returncode == 0
            if not mounted:
                self.mounting = False
                print(f"  (cannot mount a tmpfs, using {SHM}: {result.stderr!r})", flush=True)
        try:
            yield path
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(path)], check=False)
                path.rmdir()
            else:
                shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
