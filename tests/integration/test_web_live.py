"""The live page of a real emulator process: what is sent shows up (table, detail, redaction,
downloads), a page that stops reading never slows publication, and the server stops cleanly
with pages open. `tap-emulator browse` serves a directory the same way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from haralyzer import HarParser

from tests.helpers import traces as t
from tests.helpers.emulator import EmulatorProcess, metric, scrape, send_streams, wait_for
from tests.helpers.har_schema import assert_valid_har
from tests.helpers.paths import REPO
from tests.helpers.script_run import TapClientRun
from tests.helpers.web import get_json, open_stalled_event_stream, read_until

SECRET = "Bearer do-not-show-me"
BODY = b'{"order": 1234, "note": "sent by the web test"}'


def rows(emulator: EmulatorProcess, query: str = "") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = get_json(f"{emulator.ui_url}api/transactions{query}")["rows"]
    return found


def send_one(emulator: EmulatorProcess, trace: str, authority: str = t.SEED_AUTHORITY) -> None:
    request = t.request_headers(
        authority=authority, trace=trace, method="POST", path="/orders",
        extra=[("authorization", SECRET), ("content-type", "application/json")],
    )  # fmt: skip
    sent = t.buffered(request, [(":status", "201")], request_body=BODY, response_body=b"created")
    [result] = send_streams(emulator.tap, [t.stream([sent], t.identifier("inbound"))])
    assert result["code"] == "OK"


def test_a_trace_sent_shows_in_the_table_detail_and_downloads(start_emulator: Any) -> None:
    emulator = start_emulator()
    send_one(emulator, "1" * 32)
    send_one(emulator, "2" * 32, authority="other.ns.svc:80")

    assert wait_for(lambda: len(rows(emulator)) == 2, timeout=10)
    [row] = rows(emulator, "?trace=" + "1" * 8)
    assert (row["method"], row["path"], row["status"]) == ("POST", "/orders", 201)
    assert row["redacted"] == ["authorization"] and row["final"]

    detail = get_json(f"{emulator.ui_url}api/transactions/{row['id']}")
    request = detail["view"]["request"]
    assert {"name": "authorization", "value": "REDACTED", "redacted": True} in request["headers"]
    assert SECRET not in json.dumps(detail)
    assert json.loads(request["body"]["text"]) == json.loads(BODY)
    assert "> authorization: REDACTED (value removed by the emulator)" in detail["text"]

    with urllib.request.urlopen(
        f"{emulator.ui_url}api/export.har?authority=other", timeout=10
    ) as r:
        assert r.headers["X-Tap-Emulator-Transactions"] == "1"
        har = json.loads(r.read())
    assert_valid_har(har)
    [entry] = HarParser(har).har_data["entries"]
    assert entry["request"]["url"] == "http://other.ns.svc:80/orders"
    with urllib.request.urlopen(f"{emulator.ui_url}api/export.pcapng", timeout=10) as r:
        assert r.headers["X-Tap-Emulator-Transactions"] == "2"
        assert r.read(4) == b"\x0a\x0d\x0d\x0a"  # a pcapng section header block


def files_per_second(emulator: EmulatorProcess, streams: int, per_stream: int) -> float:
    """Publish `streams * per_stream` generated traces; the server's files/s while it did."""
    name = "tap_emulator_files_written_total"
    before = metric(scrape(emulator.metrics_url), name)
    target = before + streams * per_stream
    prefix = f"{int(before):016x}"[-16:]
    client = TapClientRun(
        {
            "target": emulator.tap,
            "timeout": 300,
            "streams": [
                {
                    "generate": {
                        "authority": f"load{n}.ns:80",
                        "trace_prefix": prefix,
                        "count": per_stream,
                    }
                }
                for n in range(streams)
            ],
        }
    )
    started = None
    while True:
        now = metric(scrape(emulator.metrics_url), name)
        if started is None and now > before:
            started, first = time.monotonic(), now
        if now >= target:
            break
        time.sleep(0.02)
    assert all(s["code"] == "OK" for s in client.streams(300))
    assert started is not None
    return (target - first) / max(time.monotonic() - started, 1e-3)


def lagged(emulator: EmulatorProcess) -> int:
    count: int = get_json(f"{emulator.ui_url}api/status")["pages"]["lagged"]
    return count


def test_a_page_that_stops_reading_does_not_slow_publication(start_emulator: Any) -> None:
    emulator = start_emulator()
    files_per_second(emulator, 4, 500)  # warm up: connections, caches, the index
    # Alternated, best of two each: this machine is shared, so one run says little.
    with_stalled, without = [], []
    for _ in range(2):
        without.append(files_per_second(emulator, 4, 2500))
        lagged_before = lagged(emulator)
        stalled = open_stalled_event_stream(emulator.ui_url)
        try:
            with_stalled.append(files_per_second(emulator, 4, 2500))
            status = get_json(f"{emulator.ui_url}api/status")
            # However large the kernel's buffers grew, more traffic overflows the page's queue.
            for _ in range(20):
                if lagged(emulator) > lagged_before:
                    break
                files_per_second(emulator, 4, 500)
            told = read_until(stalled, b"event: lagged")
        finally:
            stalled.close()
        assert b"event: lagged" in told, "the stalled page was never told it lagged"

    ratio = max(with_stalled) / max(without)
    print(
        f"files/s without a page: {without}, with a page that never reads: {with_stalled} "
        f"(best-of-two ratio {ratio:.2f}); index {status['index']}; pages {status['pages']}"
    )
    assert ratio > 0.6
    assert emulator.process is not None and emulator.process.poll() is None


def test_the_server_stops_cleanly_with_pages_open(start_emulator: Any) -> None:
    emulator = start_emulator()
    send_one(emulator, "3" * 32)
    stalled = open_stalled_event_stream(emulator.ui_url)
    reading = urllib.request.urlopen(f"{emulator.ui_url}api/events", timeout=30)
    try:
        assert reading.readline().startswith(b"retry:")
        started = time.monotonic()
        assert emulator.stop() == 0
        assert time.monotonic() - started < 10
    finally:
        stalled.close()
        reading.close()
    assert "stopped cleanly" in emulator.log


def page_process_of(emulator: EmulatorProcess) -> int:
    children = Path(f"/proc/{emulator.pid}/task/{emulator.pid}/children").read_text().split()
    for child in map(int, children):
        if b"tap_emulator.web.child" in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    raise AssertionError(f"no page process among {children}")


def test_capture_goes_on_when_the_pages_process_dies(start_emulator: Any) -> None:
    emulator = start_emulator()
    page = page_process_of(emulator)
    assert Path(f"/proc/{page}/stat").read_text().split()[18] == "10"  # its nice value

    os.kill(page, signal.SIGKILL)
    assert wait_for(lambda: "the web page's process ended" in emulator.log, timeout=10)
    send_one(emulator, "4" * 32)

    assert any(f.name.startswith(t.SEED_AUTHORITY) for f in emulator.output_dir.iterdir())
    assert emulator.stop() == 0


def test_browse_serves_a_directory_read_by_the_capture_reader(vectors: Path) -> None:
    directory = vectors / "buffered"
    listed = subprocess.run(
        [sys.executable, "-m", "tap_emulator", "list", str(directory), "--format", "json"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    expected = [json.loads(line) for line in listed.stdout.splitlines()]
    browse = subprocess.Popen(
        [sys.executable, "-m", "tap_emulator", "browse", str(directory), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert browse.stderr is not None
        line = browse.stderr.readline()
        found = re.search(r"open (http://\S+/)", line)
        assert found, line
        url = found[1]
        assert wait_for(lambda: get_json(f"{url}api/status")["reading"]["done"], timeout=20)
        table = get_json(f"{url}api/transactions")
        assert table["mode"] == "browse"
        assert sorted(row["path"] or "" for row in table["rows"]) == sorted(
            item["path"] or "" for item in expected
        )
        first = table["rows"][0]["id"]
        detail = get_json(f"{url}api/transactions/{first}")
        assert detail["view"]["summary"]["files"][0].startswith(str(directory))
        browse.send_signal(signal.SIGINT)
        assert browse.wait(15) == 0
    finally:
        if browse.poll() is None:
            browse.kill()
            browse.wait()
        assert browse.stderr is not None
        browse.stderr.close()
