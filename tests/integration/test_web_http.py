"""The HTTP side on aiohttp, through a real emulator process: /metrics, /healthz and /readyz as
before (HEAD, 405, the 404 hint, query strings, slow and oversized requests), and the web
page's guards (read-only, Host, headers, its own files)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.helpers.emulator import EmulatorProcess


def raw_exchange(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def head_and_body(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, body


@pytest.fixture
def emulator(start_emulator: Any) -> EmulatorProcess:
    started: EmulatorProcess = start_emulator()
    return started


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_head_answers_like_get_without_the_body(emulator: EmulatorProcess, path: str) -> None:
    get = raw_exchange(
        emulator.metrics_url,
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    head = raw_exchange(
        emulator.metrics_url,
        f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    get_status, get_headers, get_body = head_and_body(get)
    head_status, head_headers, head_body = head_and_body(head)

    assert head_status == get_status == "HTTP/1.1 200 OK"
    assert head_body == b""
    assert head_headers["content-type"] == get_headers["content-type"]
    if path != "/metrics":  # the metrics change between two scrapes
        assert head_headers["content-length"] == get_headers["content-length"] == str(len(get_body))


def test_other_methods_get_405_and_unknown_paths_the_hint(emulator: EmulatorProcess) -> None:
    post = raw_exchange(
        emulator.metrics_url,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    status, _, body = head_and_body(post)
    assert status == "HTTP/1.1 405 Method Not Allowed" and body == b"only GET\n"

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{emulator.metrics_url}/nothing?x=1", timeout=10)
    assert caught.value.code == 404
    assert caught.value.read() == b"not found: try /metrics, /healthz or /readyz\n"
    caught.value.close()


def test_query_strings_are_ignored(emulator: EmulatorProcess) -> None:
    with urllib.request.urlopen(f"{emulator.metrics_url}/readyz?verbose=1", timeout=10) as answer:
        assert answer.read() == b"ready\n"


def test_a_request_head_over_8_kib_is_refused_and_not_logged_as_an_error(
    emulator: EmulatorProcess,
) -> None:
    answer = raw_exchange(
        emulator.metrics_url, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    garbage = raw_exchange(emulator.metrics_url, b"\x16\x03\x01 not http\r\n\r\n")

    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    assert garbage.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    time.sleep(0.2)  # the log line, were there one, is written right after the answer
    assert "Error handling request" not in emulator.log
    assert "Traceback" not in emulator.log


def test_a_client_that_never_finishes_its_request_is_dropped(emulator: EmulatorProcess) -> None:
    host, _, port = emulator.metrics_url.removeprefix("http://").rpartition(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        assert connection.recv(1024) == b""  # closed by the server
    waited = time.monotonic() - started
    assert 4.0 <= waited < 15.0, waited


# --- the page's guards -------------------------------------------------------------------


def test_the_page_is_read_only(emulator: EmulatorProcess) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = raw_exchange(
            emulator.ui_url,
            f"{method} /api/transactions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
        )
        assert head_and_body(answer)[0] == "HTTP/1.1 405 Method Not Allowed", method


def test_the_page_refuses_requests_addressed_to_another_name(emulator: EmulatorProcess) -> None:
    answer = raw_exchange(
        emulator.ui_url,
        b"GET /api/transactions HTTP/1.1\r\nHost: attacker.example:8080\r\n"
        b"Connection: close\r\n\r\n",
    )
    status, _, body = head_and_body(answer)

    assert status == "HTTP/1.1 421 Misdirected Request"
    assert b"kubectl port-forward" in body


def test_the_page_and_its_files_come_with_headers_that_keep_them_private(
    emulator: EmulatorProcess,
) -> None:
    with urllib.request.urlopen(emulator.ui_url, timeout=10) as answer:
        page = answer.read().decode()
        headers = answer.headers
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in headers
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        with urllib.request.urlopen(f"{emulator.ui_url}static/{name}", timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith(kind)
            assert b"https://" not in answer.read()


def test_unknown_files_and_rows_are_not_found(emulator: EmulatorProcess) -> None:
    for path, code in (
        ("static/../../etc/passwd", 404),
        ("static/nothing.js", 404),
        ("api/transactions/12345", 404),
        ("api/transactions/abc", 400),
        ("api/transactions?status=9xx", 400),
    ):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{emulator.ui_url}{path}", timeout=10)
        caught.value.close()
        assert caught.value.code == code, path


def test_the_page_can_be_turned_off(start_emulator: Any) -> None:
    emulator = start_emulator("--ui-listen", "")
    assert emulator.ui_url == "off"
