"""The relay's settings: one table, its flags generated from it the way `serve`'s are (and
`serve`'s unchanged by sharing the generator), validated at construction, and the tap
configuration it posts to Envoy."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tap_emulator.cli import build_parser, main
from tap_emulator.config import ConfigError, build_table, format_size
from tap_emulator.labels import Direction
from tap_emulator.tools.relay.settings import RelaySettings
from tap_emulator.tools.relay.tap_config import match_predicate, tap_request
from tests.helpers.parsers import subcommand
from tests.helpers.paths import REPO

REQUIRED = {"envoy_admin": "http://127.0.0.1:15000", "to": "127.0.0.1:9000"}


def parsed(*argv: str) -> RelaySettings:
    args = build_parser().parse_args(["relay", "--envoy-admin", "127.0.0.1:1", "--to", *argv])
    fields = {item.name for item in dataclasses.fields(RelaySettings)}
    return build_table(RelaySettings, {k: v for k, v in vars(args).items() if k in fields})


def test_every_relay_setting_has_a_flag_whose_help_shows_the_tables_default() -> None:
    actions = {action.dest: action for action in subcommand("relay")._actions}
    for item in dataclasses.fields(RelaySettings):
        assert item.name in actions, item.name
        if item.metadata.get("size"):
            assert f"(default: {format_size(item.default)})" in (actions[item.name].help or "")
    assert "(default: 16 MiB)" in (actions["max_trace_bytes"].help or "")
    assert actions["direction"].choices == tuple(direction.value for direction in Direction)


def test_flags_not_given_take_the_tables_defaults() -> None:
    assert parsed("127.0.0.1:9000") == RelaySettings(**REQUIRED | {"envoy_admin": "127.0.0.1:1"})


def test_sizes_seconds_and_switches_parse_from_flags() -> None:
    settings = parsed(
        "[::1]:9000", "--streamed", "--max-trace-bytes", "2 MiB", "--backoff-max-seconds", "1.5",
        "--direction", "outbound", "--match-header", "X-Tap=1", "--match-header", "x-user=a=b",
    )  # fmt: skip
    assert (settings.streamed, settings.max_trace_bytes, settings.backoff_max_seconds) == (
        True,
        2 << 20,
        1.5,
    )
    assert settings.tap_id == "tap-emulator-relay-outbound"
    assert match_predicate(settings) == {
        "http_request_headers_match": {
            "headers": [
                {"name": "x-tap", "string_match": {"exact": "1"}},
                {"name": "x-user", "string_match": {"exact": "a=b"}},
            ]
        }
    }


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--to", "nowhere"], "--to: expected HOST:PORT"),
        (["--to", "[zz]:1"], r"--to: expected HOST:PORT or \[IPv6\]:PORT, got '\[zz\]:1'"),
        (["--to", "h:1", "--max-trace-bytes", "10"], "--max-trace-bytes: must be between"),
        (["--to", "h:1", "--queue-max-items", "0"], "--queue-max-items: must be between"),
        (["--to", "h:1", "--backoff-initial-seconds", "soon"], "--backoff-initial-seconds"),
        (["--to", "h:1", "--match-header", "no-equals"], "--match-header: expects NAME=VALUE"),
        (["--to", "h:1", "--match-json", "[1]"], "--match-json: must be a JSON object"),
        (["--to", "h:1", "--match-json", "{"], "--match-json: is not JSON"),
        (["--to", "h:1", "--envoy-admin", "https://x:1"], "--envoy-admin: .*plain http"),
    ],
)
def test_a_bad_flag_exits_2_naming_the_flag(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["relay", "--envoy-admin", "127.0.0.1:1", *argv]) == 2
    assert re.search(named, capsys.readouterr().err)


def test_the_table_refuses_bad_values_at_construction() -> None:
    with pytest.raises(ConfigError, match="max_trace_bytes"):
        RelaySettings(**REQUIRED, max_trace_bytes=1)


def test_tap_request_asks_for_json_bodies_as_bytes_on_the_admin_sink() -> None:
    settings = RelaySettings(
        **REQUIRED, streamed=True, max_buffered_rx_bytes=4096, max_buffered_tx_bytes=8192
    )
    assert json.loads(tap_request(settings)) == {
        "config_id": "tap-emulator",
        "tap_config": {
            "match": {"any_match": True},
            "output_config": {
                "sinks": [{"streaming_admin": {}, "format": "JSON_BODY_AS_BYTES"}],
                "streaming": True,
                "max_buffered_rx_bytes": 4096,
                "max_buffered_tx_bytes": 8192,
            },
        },
    }
    assert settings.tap_id == "tap-emulator-relay-inbound"


def test_match_json_replaces_the_header_matches() -> None:
    predicate = {"not_match": {"any_match": True}}
    settings = RelaySettings(**REQUIRED, match_header=("x=1",), match_json=json.dumps(predicate))
    assert match_predicate(settings) == predicate


def test_docs_relay_md_lists_every_flag() -> None:
    text = (REPO / "docs" / "relay.md").read_text()
    options = [
        option
        for action in subcommand("relay")._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    ]
    assert [option for option in options if f"`{option}" not in text] == []
