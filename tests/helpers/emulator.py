"""Real emulator processes on loopback, the xds-protos client, and /metrics scrapes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.helpers.paths import HELPERS, REPO
from tests.helpers.script_run import ClientRun

_LISTENING = re.compile(r"listening tap=(?P<tap>\S+) metrics=(?P<metrics>\S+) ui=(?P<ui>\S+)")


class EmulatorProcess:
    """`tap-emulator serve` (or a wrapper script) in its own process, on loopback."""

    def __init__(self, output_dir: Path, args: list[str], entry: list[str] | None = None) -> None:
        self.output_dir = output_dir
        command = entry or [sys.executable, "-m", "tap_emulator"]
        self.command = [
            *command,
            "serve",
            "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--ui-listen", "127.0.0.1:0",
            "--output-dir", str(output_dir),
            *args,
        ]  # fmt: skip
        self.log_lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.tap = ""
        self.metrics_url = ""
        self.ui_url = ""  # the web page, e.g. http://127.0.0.1:PORT/ ("off" when disabled)

    def start(self, timeout: float = 20.0) -> EmulatorProcess:
        self.process = subprocess.Popen(
            self.command,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        started = threading.Event()
        threading.Thread(target=self._read_log, args=(started,), daemon=True).start()
        if not started.wait(timeout):
            self.kill()
            raise AssertionError(f"emulator did not start: {self.log}")
        return self

    def _read_log(self, started: threading.Event) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match:
                self.tap = match["tap"]
                self.metrics_url = f"http://{match['metrics']}"
                self.ui_url = match["ui"]
                started.set()
        self.process.stderr.close()  # the process has exited: its pipe is done with
        started.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log(self) -> str:
        return "\n".join(self.log_lines)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class EmulatorFactory:
    """Starts emulators on demand; `close` kills whatever is still running."""

    def __init__(self, default_output_dir: Path) -> None:
        self._default_output_dir = default_output_dir
        self.started: list[EmulatorProcess] = []

    def __call__(
        self, *args: str, output_dir: Path | None = None, entry: list[str] | None = None
    ) -> EmulatorProcess:
        directory = output_dir or self._default_output_dir
        directory.mkdir(parents=True, exist_ok=True)
        emulator = EmulatorProcess(directory, list(args), entry).start()
        self.started.append(emulator)
        return emulator

    def close(self) -> None:
        for emulator in self.started:
            emulator.kill()


def slow_server_entry(write_delay_seconds: float, gate: Path | None = None) -> list[str]:
    entry = [sys.executable, str(HELPERS / "slow_server.py")]
    entry += ["--write-delay-seconds", str(write_delay_seconds)]
    if gate is not None:
        entry += ["--gate", str(gate)]
    return [*entry, "--"]


def send_streams(target: str, streams: list[dict[str, Any]], timeout: float = 60) -> list[Any]:
    """Send streams concurrently with the xds-protos client; returns per-stream results."""
    run = ClientRun({"target": target, "timeout": timeout, "streams": streams})
    return run.result(timeout + 60)["streams"]  # type: ignore[no-any-return]


def published(directory: Path) -> dict[str, bytes]:
    """The .pb files in a directory (temporaries excluded), by name."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.endswith(".pb")}


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def scrape(metrics_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Fetch /metrics and parse it with prometheus-client's own parser."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"{metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and wanted <= set(sample_labels)
    )
