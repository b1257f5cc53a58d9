"""The flag generator shared by every settings table (`config.add_setting_flags`): `serve`'s
flags and help are exactly what they were before the relay's table shared it. After changing
serve's settings on purpose, record them again with `python -m tests.helpers.parsers`."""

from __future__ import annotations

import json

import pytest

from tap_emulator.config import format_size
from tests.helpers.parsers import flags_of, subcommand
from tests.helpers.paths import FIXTURES


def test_serve_flags_and_help_are_what_they_were_before_the_generator_was_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    serve = subcommand("serve")
    assert flags_of(serve) == json.loads((FIXTURES / "cli" / "serve_flags.json").read_text())
    assert serve.format_help() == (FIXTURES / "cli" / "serve_help.txt").read_text()


def test_sizes_are_shown_in_the_largest_unit_that_divides_them() -> None:
    assert [format_size(n) for n in (0, 1000, 1024, 1536, 16 << 20, 3 << 30)] == [
        "0",
        "1000",
        "1 KiB",
        "1.5 KiB",
        "16 MiB",
        "3 GiB",
    ]
