"""What a test does when this machine lacks a part it needs (a mount, a browser, Envoy,
tshark): skip with the reason printed, or, where the run says every part must be there
(`TAP_EMULATOR_TESTS_REQUIRE_ALL=1`, as CI sets it), fail with it, so a machine that cannot
run the fault, browser or Envoy tests never passes by skipping them."""

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
