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


def publish(emulator: EmulatorProcess, streams: int, per_stream: int) -> None:
    """Send `streams * per_stream` generated traces; every stream answered OK, every file
    written."""
    name = "tap_emulator_files_written_total"
    before = metric(scrape(emulator.metrics_url), name)
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
    assert all(s["code"] == "OK" for s in client.streams(300))
    assert metric(scrape(emulator.metrics_url), name) == before + streams * per_stream


def lagged(emulator: EmulatorProcess) -> int:
    count: int = get_json(f"{emulator.ui_url}api/status")["pages"]["lagged"]
    return count


def test_a_page_that_stops_reading_is_told_it_lagged_and_holds_nothing_back(
    start_emulator: Any,
) -> None:
    """A page that asks for the event stream and never reads it: every trace is still
    answered and written, and the page is told it lagged instead of being waited for. What
    it costs publication is measured side by side in `benchmarks/web/page_open.py --stalled`."""
    emulator = start_emulator()
    lagged_before = lagged(emulator)
    stalled = open_stalled_event_stream(emulator.ui_url)
    try:
        sent = 0
        # However large the kernel's buffers grew, more traffic overflows the page's queue.
        while lagged(emulator) == lagged_before and sent < 40_000:
            publish(emulator, 4, 500)
            sent += 2000
        told = read_until(stalled, b"event: lagged")
    finally:
        stalled.close()
    status = get_json(f"{emulator.ui_url}api/status")
    print(f"observed: {sent} traces published beside a stalled page; pages {status['pages']}")
    assert lagged(emulator) > lagged_before
    assert b"event: lagged" in told, "the stalled page was never told it lagged"
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


def page_handoff(emulator: EmulatorProcess) -> tuple[float, float, float]:
    """What /metrics says the page was offered, missed, and how often it was restarted."""
    samples = scrape(emulator.metrics_url)
    return (
        metric(samples, "tap_emulator_page_files_offered_total"),
        metric(samples, "tap_emulator_page_files_skipped_total"),
        metric(samples, "tap_emulator_page_restarts_total"),
    )


def traces_on_page(emulator: EmulatorProcess) -> set[str]:
    return {row["trace"] for row in rows(emulator)}


def test_when_the_pages_process_dies_capture_goes_on_and_the_page_comes_back(
    start_emulator: Any,
) -> None:
    """What the page missed while it was down is counted in /metrics; it comes back on the
    same address and shows what is published after."""
    emulator = start_emulator()
    page = page_process_of(emulator)
    assert Path(f"/proc/{page}/stat").read_text().split()[18] == "10"  # its nice value
    before, while_down, after = "3" * 32, "4" * 32, "5" * 32
    send_one(emulator, before)
    assert wait_for(lambda: page_handoff(emulator) == (1, 0, 0), timeout=10)

    os.kill(page, signal.SIGKILL)
    assert wait_for(lambda: "the web page's process ended" in emulator.log, timeout=10)
    send_one(emulator, while_down)
    assert wait_for(lambda: "the web page is back on" in emulator.log, timeout=30)
    send_one(emulator, after)
    assert wait_for(lambda: after in traces_on_page(emulator), timeout=10)

    written = [f for f in emulator.output_dir.iterdir() if f.name.startswith(t.SEED_AUTHORITY)]
    shown, (offered, skipped, restarts) = traces_on_page(emulator), page_handoff(emulator)
    print(f"observed: {len(written)} files; on the page {sorted(shown)}; offered {offered}, "
          f"skipped {skipped}, restarts {restarts}")  # fmt: skip
    assert len(written) == 3
    assert page_process_of(emulator) != page
    assert (offered, restarts) == (3, 1)
    assert before not in shown  # the new process starts empty
    # The file sent while the page was down reached the restarted page or was counted skipped.
    assert skipped + (while_down in shown) == 1
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
