"""The page's rows and filters: what a row says of a transaction, and the filter rules (the
same cases the page's JavaScript is held to in the browser test)."""

from __future__ import annotations

import json

import pytest

from tap_emulator.config import ConfigError, build_settings
from tap_emulator.web.rows import RowFilter, row_json, text_matches, trace_ids
from tap_emulator.web.server import host_allowed
from tests.helpers.web import FILTER_CASES, SAMPLES


@pytest.mark.parametrize(("query", "expected"), FILTER_CASES, ids=str)
def test_filter_selects_what_the_page_selects(query: dict[str, str], expected: list[str]) -> None:
    wanted = RowFilter.from_query(query)

    assert [sample.key for sample in SAMPLES if wanted.matches(sample)] == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "6xx"}, "--status '6xx'"),
        ({"direction": "sideways"}, "direction: one of"),
        ({"authority": "x" * 501}, "authority: at most 500"),
    ],
)
def test_bad_filters_are_refused_with_the_reason(query: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RowFilter.from_query(query)


def test_a_glob_must_match_the_whole_value_and_a_part_anywhere() -> None:
    assert text_matches("httpbin.default.svc:8080", "default")
    assert not text_matches("httpbin.default.svc:8080", "default*")
    assert text_matches("httpbin.default.svc:8080", "*default*")
    assert not text_matches(None, "x")


def test_a_row_names_every_id_once_and_the_headers_trace_first() -> None:
    [first, _, third, *_] = SAMPLES
    row = json.loads(row_json(12, first))

    assert row["id"] == 12
    assert row["trace"] == "a7020847b1ec89328e3f8d357f373266"
    assert row["traceIds"] == ["a7020847b1ec89328e3f8d357f373266"]
    assert trace_ids(third) == ["1f00", "7936"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8080", True),
        ("[::1]:8080", True),
        ("localhost:8080", True),
        ("localhost", True),
        ("tap.localhost:8080", True),
        ("10.1.2.3", True),
        ("emulator.example.com:8080", False),
        ("127.0.0.1.nip.io:8080", False),
        (None, True),
    ],
)
def test_the_page_answers_only_to_addresses_and_localhost(host: str | None, allowed: bool) -> None:
    assert host_allowed(host, "127.0.0.1") is allowed


def test_the_page_answers_to_the_name_it_was_bound_to() -> None:
    assert host_allowed("workstation:8080", "workstation")


def test_ui_listen_defaults_to_loopback_and_empty_turns_it_off() -> None:
    assert build_settings({}).ui_listen == "127.0.0.1:8080"
    assert build_settings({"ui_listen": ""}).ui_listen == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [("ui_listen", "nowhere"), ("ui_max_transactions", 99), ("ui_max_transactions", 2_000_000)],
)
def test_bad_page_settings_stop_the_emulator_with_their_name(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        build_settings({name: value})
