"""The ext_proc benchmark's two Envoy bootstraps are configurations Envoy 1.40 accepts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.paths import REPO

pytestmark = [pytest.mark.envoy]


def validate(envoy_binary: Path, config: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(config))
    check = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


def test_bootstraps_pass_envoy_validate(
    envoy_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from extproc import envoys

    validate(
        envoy_binary, envoys.upstream_bootstrap(tmp_path / "answers.sock"), tmp_path / "u.json"
    )
    validate(envoy_binary, envoys.front_bootstrap(10001, 10002, tmp_path), tmp_path / "f.json")
