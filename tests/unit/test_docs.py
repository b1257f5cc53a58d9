"""Generated documentation stays in step with the code."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.paths import REPO


def test_settings_and_metrics_pages_are_current() -> None:
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_behaviour_page_names_every_setting() -> None:
    from tap_emulator.config import FIELDS

    text = (REPO / "docs" / "behaviour.md").read_text()
    missing = [name for name in FIELDS if f"`{name}`" not in text]
    assert missing == [], "say in docs/behaviour.md what each of these settings does"
