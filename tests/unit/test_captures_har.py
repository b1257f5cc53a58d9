"""HAR export judged by others: the HAR 1.2 JSON schema (written from the specification into
tests/fixtures/har) and haralyzer (PyPI), on every shape the real Envoy vectors have."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from haralyzer import HarEntry, HarParser

from tap_emulator.captures.export import loaded, write_har
from tap_emulator.captures.reader import read_transactions
from tests.helpers.har_schema import assert_valid_har
from tests.helpers.paths import VECTORS

DIRS = ("buffered", "streamed", "streamed_raw")


def har_of(paths: list[Path]) -> dict[str, Any]:
    out = io.StringIO()
    write_har(loaded(read_transactions(paths)), out)
    har: dict[str, Any] = json.loads(out.getvalue())
    return har


@pytest.fixture(scope="module")
def har() -> dict[str, Any]:
    return har_of([VECTORS / name for name in DIRS])


def entries_for(har: dict[str, Any], file_part: str) -> list[dict[str, Any]]:
    return [
        e for e in har["log"]["entries"] if any(file_part in f for f in e["_tapEmulator"]["files"])
    ]


def test_every_entry_validates_against_the_har_1_2_schema(har: dict[str, Any]) -> None:
    assert_valid_har(har)


def test_the_schema_is_strict_enough_to_catch_a_bad_entry(har: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(har))
    del broken["log"]["entries"][0]["timings"]["wait"]
    with pytest.raises(jsonschema.ValidationError):
        assert_valid_har(broken)


def test_haralyzer_reads_one_entry_per_transaction(har: dict[str, Any]) -> None:
    parser = HarParser(har)
    files = sum(
        1
        for name in DIRS
        for path in (VECTORS / name).iterdir()
        if path.suffix in (".pb", ".pb_length_delimited")
    )

    assert sum(len(page.entries) for page in parser.pages) == files == len(har["log"]["entries"])


def test_a_get_entry_has_its_url_status_timings_and_json_body(har: dict[str, Any]) -> None:
    [raw] = entries_for(har, "buffered/h1_get_b3.pb")
    entry = HarEntry(raw)

    assert entry.request.method == "GET"
    assert entry.request.url == (
        "http://httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080/get"
    )
    assert entry.response.status == 200
    assert entry.response.mimeType == "application/json"
    assert json.loads(raw["response"]["content"]["text"])["path"] == "/get"
    assert raw["timings"]["wait"] == pytest.approx(1.197, abs=0.001)
    assert raw["startedDateTime"] == "2026-11-24T16:51:15.527Z"
    assert raw["serverIPAddress"] == "127.0.0.1"


def test_grpc_bodies_are_base64_with_trailers_kept_aside(har: dict[str, Any]) -> None:
    import base64

    [raw] = entries_for(har, "buffered/grpc_unary_trailers.pb")

    content = raw["response"]["content"]
    assert content["encoding"] == "base64"
    assert base64.b64decode(content["text"])[:1] == b"\x00"
    assert raw["response"]["httpVersion"] == "HTTP/2"
    assert {"name": "grpc-status", "value": "0"} in raw["response"]["_trailers"]


def test_truncation_and_missing_requests_are_commented(har: dict[str, Any]) -> None:
    [large] = entries_for(har, "buffered/h1_post_large_b3.pb")
    [rejected] = entries_for(har, "streamed/odd_authority_space.pb_length_delimited")

    assert "truncated" in large["response"]["content"]["comment"]
    assert "1024 bytes captured of 5000" in large["comment"]
    assert rejected["request"]["method"] == "" and rejected["response"]["status"] == 400
    assert "recorded no request" in rejected["comment"]
