"""Testing: an in-process emulator on port 0, and publishers that inject delays and faults.

Shipped with the package (as grpc and aiohttp ship their test utilities) so that our tests,
the benchmarks and anyone embedding the emulator can run the real server without a
subprocess, and put a slow or failing disk under it without root or a tmpfs.

    async with InProcessEmulator(Settings(output_dir=tmp)) as emulator:
        channel = grpc.aio.insecure_channel(emulator.tap_target)
        ...
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from tap_emulator import app
from tap_emulator.config import Settings
from tap_emulator.write.publisher import NextFree, OurFile, Publisher, SweepResult


class DelegatingPublisher:
    """A publisher that hands every call to another; subclasses override what they change."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner

    @property
    def method(self) -> str:
        return self.inner.method

    @property
    def memory_backed(self) -> bool:
        return self.inner.memory_backed

    def open(self) -> None:
        self.inner.open()

    def sweep(self, older_than_seconds: float = 600.0) -> SweepResult:
        return self.inner.sweep(older_than_seconds)

    def probe(self) -> str | None:
        return self.inner.probe()

    def publish(self, stem: str, sequence: int, payload: bytes, next_free: NextFree) -> int:
        return self.inner.publish(stem, sequence, payload, next_free)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def delete(self, name: str) -> bool:
        return self.inner.delete(name)

    def scan(self) -> Iterator[OurFile]:
        return self.inner.scan()

    def fsync_directory(self) -> None:
        self.inner.fsync_directory()

    def close(self) -> None:
        self.inner.close()


class SlowPublisher(DelegatingPublisher):
    """Each publish costs `delay_seconds` more; with a `gate`, nothing is published (and
    probes wait too, like a stalled disk) until the gate is opened or, if it is a path, that
    file exists."""

    def __init__(
        self,
        inner: Publisher,
        delay_seconds: float = 0.0,
        gate: threading.Event | Path | None = None,
        *,
        gate_probes: bool = False,
    ) -> None:
        super().__init__(inner)
        self.delay_seconds = delay_seconds
        self.gate = gate
        self.gate_probes = gate_probes

    def _wait_for_gate(self) -> None:
        gate = self.gate
        if isinstance(gate, threading.Event):
            gate.wait()
        elif gate is not None:
            while not gate.exists():
                time.sleep(0.01)

    @property
    def memory_backed(self) -> bool:
        return False  # a slow disk is, by definition, not memory: keep it off the event loop

    def probe(self) -> str | None:
        if self.gate_probes:
            self._wait_for_gate()
        return self.inner.probe()

    def publish(self, stem: str, sequence: int, payload: bytes, next_free: NextFree) -> int:
        self._wait_for_gate()
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return self.inner.publish(stem, sequence, payload, next_free)


Fault = Callable[[str, int, bytes], OSError | None]
"""(stem, sequence, payload) -> the error this publish should fail with, or None."""


class FaultyPublisher(DelegatingPublisher):
    """Publishes fail as `fault` decides (for example ENOSPC until told otherwise, or EFBIG
    for one large file); deletes can be made to fail with `delete_fault`."""

    def __init__(
        self,
        inner: Publisher,
        fault: Fault | None = None,
        delete_fault: Callable[[str], OSError | None] | None = None,
    ) -> None:
        super().__init__(inner)
        self.fault = fault
        self.delete_fault = delete_fault
        self.attempts = 0

    def publish(self, stem: str, sequence: int, payload: bytes, next_free: NextFree) -> int:
        self.attempts += 1
        error = self.fault(stem, sequence, payload) if self.fault is not None else None
        if error is not None:
            raise error
        return self.inner.publish(stem, sequence, payload, next_free)

    def delete(self, name: str) -> bool:
        error = self.delete_fault(name) if self.delete_fault is not None else None
        if error is not None:
            raise error
        return self.inner.delete(name)


class InProcessEmulator:
    """The real server (app.build + app.start) on loopback ports chosen by the kernel. The web
    page runs in a process of its own, so it is started only with `with_page`."""

    def __init__(
        self, settings: Settings, publisher: Publisher | None = None, *, with_page: bool = False
    ) -> None:
        metrics_listen = "127.0.0.1:0" if settings.metrics_listen else ""
        ui_listen = "127.0.0.1:0" if settings.ui_listen and with_page else ""
        self.settings = replace(
            settings, listen="127.0.0.1:0", metrics_listen=metrics_listen, ui_listen=ui_listen
        )
        self.emulator = app.build(self.settings, publisher)
        self.exit_status: int | None = None
        self._background: list[asyncio.Task[None]] = []

    @property
    def tap_target(self) -> str:
        assert self.emulator.tap_address is not None, "not started"
        host, port = self.emulator.tap_address
        return f"{host}:{port}"

    @property
    def metrics_url(self) -> str:
        assert self.emulator.metrics_address is not None, "metrics_listen is off"
        host, port = self.emulator.metrics_address
        return f"http://{host}:{port}"

    @property
    def ui_url(self) -> str:
        assert self.emulator.ui_address is not None, "ui_listen is off"
        host, port = self.emulator.ui_address
        return f"http://{host}:{port}"

    async def __aenter__(self) -> InProcessEmulator:
        await app.start(self.emulator)
        self._background = [
            asyncio.create_task(self.emulator.registry.close_idle_streams()),
        ]
        return self

    async def stop(self) -> int:
        """Drain and stop as on SIGTERM; returns the exit status `serve` would have."""
        for task in self._background:
            task.cancel()
        self.exit_status = await app.stop(self.emulator)
        return self.exit_status

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.exit_status is None:
            await self.stop()
