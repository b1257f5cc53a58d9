"""The web page in a real headless Chromium (Debian's, driven by Playwright): against a real
emulator process it loads without console errors, shows a trace within a second of its file
being published, filters by authority and trace id, shows the detail with what the client
sent and what was redacted, never runs captured markup, and its HAR download parses; over a
browsed directory of 10,000 transactions it keeps only the rows in view in the document.
Screenshots go to tests/artifacts/web/ (printed)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from haralyzer import HarParser

from tap_emulator.web.rows import row
from tests.helpers import traces as t
from tests.helpers.captures import AUTHORITY, buffered, request_headers
from tests.helpers.emulator import EmulatorProcess, send_streams
from tests.helpers.paths import REPO
from tests.helpers.unavailable import unavailable
from tests.helpers.web import (
    ARTIFACTS,
    CHROMIUM_FLAGS,
    FILTER_CASES,
    SAMPLES,
    find_or_install_chromium,
)

pytestmark = pytest.mark.slow

SECRET = "Bearer never-on-the-page"
MARKUP = '<img src="x" onerror="window.capturedMarkupRan = true">'
BODY = json.dumps({"note": "sent by the browser test"}).encode()
ALPHA, BETA = "alpha.shop.svc:8080", "beta.shop.svc:8080"
TRACES = {"first": "a1" * 16, "second": "b2" * 16, "third": "c3" * 16}


@pytest.fixture(scope="module")
def browser_context_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, why = find_or_install_chromium()
    if chromium is None:
        unavailable(why)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        # A declared test dependency: missing means a broken set-up, not a machine without a
        # browser, so it fails rather than hiding the page's tests.
        pytest.fail("playwright is not installed (pip install -e '.[test]')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser: {chromium}; screenshots in {ARTIFACTS}")
    with sync_playwright() as playwright:
        contexts = []

        def new_context() -> Any:
            profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data dir
            context = playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_FLAGS[1:],
                accept_downloads=True,
                viewport={"width": 1500, "height": 860},
            )
            contexts.append(context)
            return context

        yield new_context
        for context in contexts:
            context.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))


def send(emulator: EmulatorProcess, items: list[tuple[str, str, str]]) -> None:
    """(authority, trace id, path) each as one buffered POST with a secret and a JSON body."""
    sent = []
    for authority, trace, path in items:
        request = t.request_headers(
            authority=authority, trace=trace, method="POST", path=path,
            extra=[("authorization", SECRET), ("content-type", "application/json")],
        )  # fmt: skip
        response = [(":status", "200"), ("content-type", "text/html")]
        sent.append(t.buffered(request, response, request_body=BODY, response_body=MARKUP.encode()))
    [result] = send_streams(emulator.tap, [t.stream(sent, t.identifier("inbound"))])
    assert result["code"] == "OK"  # OK: every file is on disk


def count_text(page: Any) -> str:
    return str(page.inner_text("#count"))


def test_the_live_page_in_a_real_browser(
    start_emulator: Any, browser_context_factory: Any, tmp_path: Path
) -> None:
    emulator = start_emulator()
    page = browser_context_factory().new_page()
    console = Console(page)
    page.goto(emulator.ui_url)
    page.wait_for_selector("#connection.live")
    page.wait_for_selector("#health.pill-ok")

    send(emulator, [(ALPHA, TRACES["first"], "/orders")])
    published = time.monotonic()
    page.wait_for_selector(f".rows .row .c-trace:text-is('{TRACES['first']}')", timeout=5000)
    shown_after = time.monotonic() - published
    print(f"the trace was in the table {shown_after * 1000:.0f} ms after its file was published")
    assert shown_after < 1.0

    send(emulator, [(BETA, TRACES["second"], "/cart"), (BETA, TRACES["third"], "/pay")])
    page.wait_for_function("() => document.querySelectorAll('.rows .row').length === 3")
    assert count_text(page) == "3 transactions"
    page.screenshot(path=str(ARTIFACTS / "list.png"))

    page.fill("#f-authority", "alpha")
    page.wait_for_function(
        "() => document.querySelector('#count').textContent === 'showing 1 of 3'"
    )
    assert page.locator(".rows .row").count() == 1
    assert page.inner_text(".rows .row .c-authority") == ALPHA
    page.fill("#f-authority", "")
    page.wait_for_function(
        "() => document.querySelector('#count').textContent === '3 transactions'"
    )
    page.fill("#f-trace", TRACES["third"][:10])
    page.wait_for_function(
        "() => document.querySelector('#count').textContent === 'showing 1 of 3'"
    )
    assert page.locator(".rows .row").count() == 1
    assert page.inner_text(".rows .row .c-path") == "/pay"
    assert "trace=" + TRACES["third"][:10] in page.url

    with page.expect_download() as download:
        page.click("#download-har")
    har = json.loads(Path(download.value.path()).read_text())
    [entry] = HarParser(har).har_data["entries"]
    assert entry["request"]["url"] == f"http://{BETA}/pay"

    page.click("#f-clear")
    page.wait_for_function(
        "() => document.querySelector('#count').textContent === '3 transactions'"
    )
    page.click(f".rows .row:has(.c-trace:text-is('{TRACES['first']}'))")
    page.wait_for_selector(".detail-body .message.response h3")
    detail = page.inner_text("#detail-body")
    assert "content-type" in detail and "application/json" in detail  # a header the client sent
    assert "sent by the browser test" in detail  # and its body
    assert MARKUP in detail  # a captured HTML body is shown as text...
    assert page.locator("#detail-body img").count() == 0  # ...not as markup...
    assert page.evaluate("window.capturedMarkupRan") is None  # ...and never runs
    redacted = page.locator(".detail-body .message.request tr[data-header='authorization']")
    assert redacted.locator(".redacted").inner_text() == "REDACTED (value removed by the emulator)"
    assert SECRET not in page.content()
    page.screenshot(path=str(ARTIFACTS / "detail.png"))

    page.click("#detail-text")
    assert "> authorization: REDACTED (value removed by the emulator)" in page.inner_text(
        "#detail-body"
    )
    page.screenshot(path=str(ARTIFACTS / "detail-text.png"))

    assert console.errors == []


def test_the_pages_filters_agree_with_the_servers(
    start_emulator: Any, browser_context_factory: Any
) -> None:
    emulator = start_emulator()
    page = browser_context_factory().new_page()
    page.goto(emulator.ui_url)
    page.wait_for_selector("#connection.live")
    rows = [row(number, sample) for number, sample in enumerate(SAMPLES)]
    keys = [sample.key for sample in SAMPLES]
    for query, expected in FILTER_CASES:
        chosen = page.evaluate(
            "([rows, query]) => rows.filter(compileFilter(query)).map((r) => r.id)",
            [rows, query],
        )
        assert [keys[number] for number in chosen] == expected, query


def write_captures(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    for number in range(count):
        trace = f"{number:032x}"
        status = ("200", "404", "503")[number % 3]
        path = f"/items/{number}"
        raw = buffered(request_headers(trace, path), [(":status", status)], response_body=b"{}")
        (directory / f"{AUTHORITY}-{trace}-1.pb").write_bytes(raw)


def test_ten_thousand_rows_keep_only_what_is_in_view_in_the_document(
    browser_context_factory: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "captures"
    write_captures(directory, 10_000)
    browse = subprocess.Popen(
        [sys.executable, "-m", "tap_emulator", "browse", str(directory), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert browse.stderr is not None
        found = re.search(r"open (http://\S+/)", browse.stderr.readline())
        assert found
        page = browser_context_factory().new_page()
        console = Console(page)
        page.goto(found[1])
        page.wait_for_function(
            "() => document.querySelector('#count').textContent === '10,000 transactions'",
            timeout=60_000,
        )
        in_document = page.evaluate("document.querySelectorAll('.rows .row').length")
        assert in_document < 100

        started = time.monotonic()
        page.select_option("#f-status", "5xx")
        page.wait_for_function(
            "() => document.querySelector('#count').textContent === 'showing 3,333 of 10,000'"
        )
        filtered_ms = (time.monotonic() - started) * 1000
        page.select_option("#f-status", "")
        page.wait_for_function(
            "() => document.querySelector('#count').textContent === '10,000 transactions'"
        )
        top = page.inner_text(".rows .row .c-path")
        page.evaluate("document.querySelector('#viewport').scrollTop = 1e9")
        page.wait_for_function(
            "(top) => ![...document.querySelectorAll('.rows .row .c-path')]"
            ".some((cell) => cell.textContent === top)",
            arg=top,
        )
        assert page.evaluate("document.querySelectorAll('.rows .row').length") < 100
        page.screenshot(path=str(ARTIFACTS / "ten-thousand.png"))
        print(f"10,000 rows: {in_document} in the document; a filter took {filtered_ms:.0f} ms")
        assert console.errors == []
        browse.send_signal(signal.SIGINT)
        assert browse.wait(15) == 0
    finally:
        if browse.poll() is None:
            browse.kill()
            browse.wait()
        assert browse.stderr is not None
        browse.stderr.close()
