"""Fixtures shared by every test folder; helpers live in tests/helpers, never here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers.emulator import EmulatorFactory
from tests.helpers.paths import VECTORS

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("deep", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[EmulatorFactory]:
    """Starts emulators on demand (output in tmp_path/out unless told otherwise); kills
    whatever is still running at the end."""
    factory = EmulatorFactory(tmp_path / "out")
    yield factory
    factory.close()


@pytest.fixture
def vectors() -> Path:
    """The real Envoy tap vectors kept in the repository."""
    assert VECTORS.is_dir(), f"vectors missing at {VECTORS}"
    return VECTORS
