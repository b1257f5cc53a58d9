"""What a test does when this machine lacks a part it needs (a mount, a browser, Envoy,
tshark): skip with the reason printed, or, where the run says every part must be there
(`TAP_EMULATOR_TESTS_REQUIRE_ALL=1`, for a machine meant to have them all), fail with it, so
such a machine never passes by skipping the fault, browser or Envoy tests."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ALL = "TAP_EMULATOR_TESTS_REQUIRE_ALL"


def unavailable(reason: str) -> NoReturn:
    print(reason)
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ALL}=1: every part must be available)")
    pytest.skip(reason)
