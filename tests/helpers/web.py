"""The web page's test material: sample transactions and filter cases that the Python filter
(`tap_emulator.web.rows`) and the page's JavaScript must agree on, a headless Chromium found
or installed from Debian's registry, and a reader of the event stream."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tap_emulator.captures.model import Transaction

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "web"
_INSTALL_SECONDS = 900


def sample(
    key: str,
    *,
    authority: str | None,
    path: str | None,
    status: int | None,
    direction: str,
    trace_id: str | None = None,
    envoy_trace_id: int | None = None,
) -> Transaction:
    return Transaction(
        key=key,
        final=True,
        origin="emulator",
        streamed=False,
        time=1_700_000_000.0,
        time_source="recorded",
        direction=direction,
        authority=authority,
        client_namespace=None,
        method="GET",
        path=path,
        scheme="http",
        status=status,
        grpc_status=None,
        grpc_message=None,
        http_version=None,
        duration_seconds=0.001,
        request_body_bytes=0,
        response_body_bytes=0,
        request_truncated=False,
        response_truncated=False,
        request_content_length=None,
        response_content_length=None,
        trace_id=trace_id,
        name_trace_id=trace_id,
        envoy_trace_id=envoy_trace_id,
        client_address=None,
        server_address=None,
        redacted_headers=(),
        missing=(),
        sequence_gaps=(),
        evicted=False,
        pieces=(),
    )


SAMPLES = [
    sample(
        "a",
        authority="httpbin.default.svc:8080",
        path="/get?x=1",
        status=200,
        direction="inbound",
        trace_id="a7020847b1ec89328e3f8d357f373266",
    ),
    sample(
        "b",
        authority="reviews.bookinfo.svc.cluster.local:9080",
        path="/reviews/0",
        status=503,
        direction="outbound",
        trace_id="00000000000000000000000000abcdef",
    ),
    sample(
        "c",
        authority="HTTPBIN.default.svc:8080",
        path="/status/404",
        status=404,
        direction="inbound",
        envoy_trace_id=0x1F00,
    ),
    sample("d", authority=None, path=None, status=None, direction="unknown", envoy_trace_id=42),
    sample(
        "e",
        authority="grpc.echo.svc:50051",
        path="/demo.Echo/Unary",
        status=200,
        direction="outbound",
        trace_id="ffff0000ffff0000ffff0000ffff0000",
    ),
]

# (filter as the page's query string gives it, keys of the samples it selects)
FILTER_CASES: list[tuple[dict[str, str], list[str]]] = [
    ({}, ["a", "b", "c", "d", "e"]),
    ({"authority": "httpbin"}, ["a", "c"]),
    ({"authority": "*.svc:8080"}, ["a", "c"]),
    ({"authority": "reviews.*"}, ["b"]),
    ({"authority": "[hg]*"}, ["a", "c", "e"]),
    ({"authority": "[!h]*"}, ["b", "e"]),
    ({"path": "/status"}, ["c"]),
    ({"path": "/*/0"}, ["b"]),
    ({"path": "?x=1"}, ["a"]),
    ({"status": "5xx"}, ["b"]),
    ({"status": "2xx"}, ["a", "e"]),
    ({"status": "4xx,5xx"}, ["b", "c"]),
    ({"status": "404"}, ["c"]),
    ({"status": "none"}, ["d"]),
    ({"trace": "abcdef"}, ["b"]),
    ({"trace": "A7020847"}, ["a"]),
    ({"trace": "1f00"}, ["c"]),
    ({"trace": "7936"}, ["c"]),  # 0x1f00 in decimal
    ({"trace": "42"}, ["d"]),
    ({"direction": "outbound"}, ["b", "e"]),
    ({"direction": "unknown"}, ["d"]),
    ({"direction": "inbound", "status": "2xx"}, ["a"]),
    ({"authority": "nothing-like-it"}, []),
]


def find_or_install_chromium() -> tuple[str | None, str]:
    """Debian's Chromium, or None and why not. Installed with apt-get where the tests run as
    root and it is missing (with chromium-driver, for anyone driving it with Selenium)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "chromium is not installed and apt-get cannot install it here (not root)"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update"], ["install", "-y", "chromium", "chromium-driver"]):
        try:
            subprocess.run(
                ["apt-get", *step],
                env=environment,
                capture_output=True,
                timeout=_INSTALL_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            break
    found = shutil.which("chromium")
    if found:
        return found, ""
    return None, "chromium is not installed and `apt-get install -y chromium` did not install it"


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def open_stalled_event_stream(base_url: str) -> socket.socket:
    """A page that asks for the event stream and then never reads: the smallest receive
    buffer the kernel allows, so the server's writes back up at once."""
    host, _, port = base_url.removeprefix("http://").rstrip("/").rpartition(":")
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect((host, int(port)))
    connection.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return connection


def read_until(connection: socket.socket, wanted: bytes, within_seconds: float = 10.0) -> bytes:
    """What a stalled page finally reads, up to `wanted` (or all that came in time)."""
    deadline = time.monotonic() + within_seconds
    received = bytearray()
    while wanted not in received and time.monotonic() < deadline:
        connection.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = connection.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)
