"""What the relay takes from Envoy's `/server_info`: the node, or an error naming what is
wrong with an answer no stock Envoy gives (never a traceback)."""

from __future__ import annotations

import json

import pytest

from tap_emulator.tools._envoy_admin import MalformedAnswerError, parse_server_info
from tap_emulator.tools._tap_client import node_from_json
from tests.helpers.fake_envoy_admin import NODE, server_info_of


def test_a_stock_node_is_read_and_fields_from_a_future_envoy_are_ignored() -> None:
    node = node_from_json(parse_server_info(server_info_of(NODE)))
    assert node.id == NODE["id"]
    assert node.metadata.fields["NAMESPACE"].string_value == "relay-ns"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"state": "LIVE"}', "its node is missing"),
        (server_info_of(["n"]), "its node is a JSON list"),
        (b'{"node": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
        (
            server_info_of({"pad": [[]] * 200_000}),
            r"weighs 25.2 MiB once parsed \(its 800036 bytes plus 64 per JSON value\)",
        ),
    ],
)
def test_a_server_info_no_stock_envoy_gives_is_named(body: bytes, named: str) -> None:
    with pytest.raises(MalformedAnswerError, match=named):
        parse_server_info(body)


@pytest.mark.parametrize(
    ("node", "named"),
    [
        ({"id": 12345}, "id field"),
        ({"id": "n", "metadata": "NAMESPACE=x"}, "metadata field"),
        ({"id": "n", "metadata": {"a": json.loads("[" * 150 + "]" * 150)}}, "too deep"),
        ({"locality": 3}, "locality field"),
    ],
)
def test_a_node_of_the_wrong_shape_is_a_value_error_naming_the_field(
    node: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        node_from_json(parse_server_info(server_info_of(node)))
