"""Fixtures for the deploy tests: helm, and the emulator chart as the user guide installs it."""

from __future__ import annotations

import pytest
from deploy_support import (
    EMULATOR_CHART,
    EMULATOR_NAMESPACE,
    EMULATOR_RELEASE,
    Helm,
    Rendered,
    find_tool,
)


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(find_tool("helm"), tmp_path_factory.mktemp("helm-values"))


@pytest.fixture(scope="session")
def emulator(helm: Helm) -> Rendered:
    """The emulator chart as the guide installs it: default values, analysis-emulator."""
    return helm.template(EMULATOR_CHART, EMULATOR_RELEASE, EMULATOR_NAMESPACE)
