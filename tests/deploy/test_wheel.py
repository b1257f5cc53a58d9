"""The wheel the image installs ships the whole package: every tracked file under
tap_emulator/ (the page's HTML, CSS and JavaScript included, which a Python-only package
list would leave out), and nothing from outside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow


def _build_wheel(into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(into), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = into.glob("tap_emulator-*.whl")
    return wheel


def test_the_wheel_holds_every_tracked_package_file_and_nothing_else(tmp_path: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "tap_emulator"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
    shipped = {name for name in names if ".dist-info/" not in name}
    missing = sorted(set(tracked) - shipped)
    extra = sorted(shipped - set(tracked))
    print(f"observed: {len(shipped)} files shipped, {len(tracked)} tracked")
    assert "tap_emulator/web/static/index.html" in shipped
    assert missing == []
    assert extra == []
