"""The pcapng export judged by Wireshark's dissectors (tshark): HTTP/1.1, HTTP/2 and gRPC
show the methods, paths, header values, status codes and body bytes the tap recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tap_emulator.captures.exchange import load_exchange
from tap_emulator.captures.reader import read_transactions
from tests.helpers.paths import REPO, VECTORS
from tests.helpers.tshark import fields, find_or_install_tshark
from tests.helpers.unavailable import unavailable

RECORDED_PORT = "36923"  # the Envoy listener the vectors were recorded on
DECODE_AS_HTTP = ["-d", f"tcp.port=={RECORDED_PORT},http"]
SOURCES = [
    VECTORS / "buffered" / "h1_get_b3.pb",
    VECTORS / "buffered" / "h1_post_large_b3.pb",
    VECTORS / "buffered" / "grpc_unary_trailers.pb",
    VECTORS / "streamed" / "grpc_bidi.pb_length_delimited",
    VECTORS / "streamed" / "h1_post_chunked_b3.pb_length_delimited",
    VECTORS / "streamed" / "odd_authority_space.pb_length_delimited",
]


@pytest.fixture(scope="module")
def tshark() -> str:
    found, why = find_or_install_tshark()
    if found is None:
        unavailable(why)
    return found


def export(tmp_path: Path, *args: str | Path) -> Path:
    output = tmp_path / "capture.pcapng"
    done = subprocess.run(
        [sys.executable, "-m", "tap_emulator", "export", "pcap", *map(str, args), "-o", output],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return output


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tmp_path_factory.mktemp("pcap"), *SOURCES)


def http1(tshark: str, capture: Path, extra: list[str]) -> list[dict[str, list[str]]]:
    names = [
        "tcp.stream",
        "http.request.method",
        "http.request.uri",
        "http.response.code",
        "http.request.line",
        "http.response.line",
        "http.file_data",
    ]
    return fields(tshark, str(capture), "http.request or http.response", names, extra)


def test_http1_requests_and_responses_dissect_with_headers_and_bodies(
    tshark: str, capture: Path
) -> None:
    packets = http1(tshark, capture, DECODE_AS_HTTP)

    requests = [p for p in packets if p["http.request.method"]]
    assert [(p["http.request.method"], p["http.request.uri"]) for p in requests] == [
        (["GET"], ["/get"]),
        (["POST"], ["/post"]),
        (["POST"], ["/chunked"]),
    ]
    get_lines = requests[0]["http.request.line"]
    assert "x-b3-traceid: a7020847b1ec89328e3f8d357f373266\\r\\n" in get_lines
    assert "host: httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080\\r\\n" in get_lines
    responses = [p for p in packets if p["http.response.code"]]
    assert [p["http.response.code"] for p in responses] == [["200"], ["200"], ["200"], ["400"]]
    assert '"path": "/get"' in responses[0]["http.file_data"][0]
    assert responses[1]["http.file_data"][0].startswith("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345")
    assert "content-length: 1024\\r\\n" in responses[1]["http.response.line"]
    assert responses[2]["http.file_data"] == [
        "resp-chunk-0:18\\nresp-chunk-1:18\\nresp-chunk-2:18\\n"
    ]
    assert responses[3]["http.file_data"] == ["Bad Request"]


def test_http1_dissects_on_any_port_without_being_told(tshark: str, capture: Path) -> None:
    packets = http1(tshark, capture, [])

    assert sum(1 for p in packets if p["http.request.method"]) == 3


def test_grpc_over_http2_dissects_headers_messages_and_trailers(tshark: str, capture: Path) -> None:
    names = ["tcp.stream", "http2.header.name", "http2.header.value", "grpc.message_data"]
    packets = fields(tshark, str(capture), "http2.type == 1 or grpc", names, DECODE_AS_HTTP)

    headers = [
        dict(zip(p["http2.header.name"], p["http2.header.value"], strict=True)) for p in packets
    ]
    paths = [h[":path"] for h in headers if ":path" in h]
    assert paths == ["/demo.Echo/Unary", "/demo.Echo/Bidi"]
    assert [h["grpc-status"] for h in headers if "grpc-status" in h] == ["0", "0"]
    assert {h.get("x-demo-trailer") for h in headers} >= {"unary-done"}
    messages = [bytes.fromhex(p["grpc.message_data"][0]) for p in packets if p["grpc.message_data"]]
    assert b"\x0a\x06pong:a" in messages and b"\x0a\x04ping" in messages
    assert len(messages) == 2 + 6


def test_placeholder_addresses_need_no_decode_as(tshark: str, tmp_path: Path) -> None:
    capture = export(
        tmp_path, VECTORS / "buffered" / "grpc_unary_trailers.pb", "--placeholder-addresses"
    )
    names = ["ip.src", "tcp.dstport", "http2.header.value"]
    packets = fields(tshark, str(capture), "http2.type == 1", names, [])

    assert packets and packets[0]["ip.src"] == ["192.0.2.1"]
    assert packets[0]["tcp.dstport"] == ["80"]
    assert "/demo.Echo/Unary" in packets[0]["http2.header.value"]


def test_plain_http2_when_asked_and_the_comment_names_the_files(
    tshark: str, tmp_path: Path
) -> None:
    source = VECTORS / "buffered" / "h2_get_b3.pb"
    capture = export(tmp_path, source, "--http-version", "2")
    names = ["http2.header.name", "http2.header.value", "http2.data.data", "frame.comment"]
    packets = fields(tshark, str(capture), "http2 or frame.comment", names, DECODE_AS_HTTP)

    headers = [
        dict(zip(p["http2.header.name"], p["http2.header.value"], strict=True)) for p in packets
    ]
    assert any(h.get(":method") == "GET" and h.get(":path") == "/get" for h in headers)
    assert any(h.get(":status") == "200" for h in headers)
    body = b"".join(bytes.fromhex(v) for p in packets for v in p["http2.data.data"])
    [transaction] = list(read_transactions([source]))
    assert body == load_exchange(transaction).response.body
    [comment] = [c for p in packets for c in p["frame.comment"]]
    assert str(source) in comment and "as HTTP/2" in comment
