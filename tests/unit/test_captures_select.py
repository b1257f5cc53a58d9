"""The selection flags of list, show and export: status classes, times, ids, authorities."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_emulator.captures.reader import read_transactions
from tap_emulator.captures.select import Selection, parse_since, parse_statuses


def test_statuses_are_codes_classes_or_none() -> None:
    assert parse_statuses("5xx, 404,none") == ("5xx", "404", "none")
    with pytest.raises(ValueError, match="'6xx'"):
        parse_statuses("6xx")


def test_since_is_iso_8601_or_a_span_back_from_now() -> None:
    assert parse_since("15m", now_seconds=10_000.0) == 10_000.0 - 900
    assert parse_since("2026-11-24T16:51:15Z") == parse_since("2026-11-24T16:51:15")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("yesterday")


def test_a_selection_matches_by_every_id_and_a_glob_of_the_authority(vectors: Path) -> None:
    [transaction] = list(
        read_transactions([vectors / "streamed" / "h1_get_b3.pb_length_delimited"])
    )
    envoy_hex = transaction.envoy_trace_id_hex
    assert envoy_hex is not None

    assert Selection(trace="A7020847B1EC89328E3F8D357F373266").matches(transaction)
    assert Selection(trace=envoy_hex).matches(transaction)
    assert Selection(trace=str(transaction.envoy_trace_id)).matches(transaction)
    assert Selection(authority="HTTPBIN-*:8080", statuses=("2xx",)).matches(transaction)
    assert not Selection(statuses=("5xx", "none")).matches(transaction)
    assert not Selection(since_seconds=(transaction.time or 0) + 1).matches(transaction)
