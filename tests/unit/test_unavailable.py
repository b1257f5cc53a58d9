"""A missing part skips a test on a developer's machine and fails it where the run requires
every part (CI)."""

from __future__ import annotations

import pytest

from tests.helpers.unavailable import REQUIRE_ALL, unavailable


def test_a_missing_part_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ALL, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no tmpfs"):
        unavailable("no tmpfs")


def test_a_missing_part_fails_where_every_part_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ALL, "1")
    with pytest.raises(pytest.fail.Exception, match="no tmpfs"):
        unavailable("no tmpfs")
