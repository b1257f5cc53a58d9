"""One open web page, for the page-open benchmark: follows the emulator's event stream as the
page does (the table fetched on `hello` and on `lagged`, every event decoded), or with
`--browser`, the page itself in headless Chromium.

It stands for a browser on another machine (in a cluster the page is reached through
`kubectl port-forward`): it runs at `nice` 19, so that its own CPU counts as little as can be
against the emulator's on the machine measured. On SIGTERM it prints one JSON line:
events, rows received, tables fetched, lags, and (in a browser) the rows the page held and
its console errors.

    python benchmarks/web/page_client.py http://127.0.0.1:8080/ [--browser]
    python benchmarks/web/page_client.py http://127.0.0.1:8080/ --stalled   # never reads
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import threading
from typing import Any

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def report(stats: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"event": "done", **stats}) + "\n")
    sys.stdout.flush()


async def follow(url: str, stats: dict[str, Any], stop: asyncio.Event) -> None:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def fetch_table() -> None:
            async with session.get(f"{url}api/transactions") as answer:
                table = await answer.json()
            stats["tables"] += 1
            stats["table_rows"] = len(table["rows"])

        async with session.get(f"{url}api/events") as answer:
            sys.stdout.write(json.dumps({"event": "streaming"}) + "\n")
            sys.stdout.flush()
            event = ""
            while not stop.is_set():
                line = (await answer.content.readline()).decode()
                if not line:
                    break
                line = line.rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    stats["events"] += 1
                    if event == "rows":
                        stats["rows"] += len(data["rows"])
                    elif event in ("hello", "lagged"):
                        stats["lagged"] += event == "lagged"
                        await fetch_table()


async def run_follower(url: str) -> None:
    stats: dict[str, Any] = {"events": 0, "rows": 0, "tables": 0, "lagged": 0, "table_rows": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(follow(url, stats, stop))
    await stop.wait()
    task.cancel()
    report(stats)


def run_stalled(url: str) -> None:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect((host, int(port)))
    connection.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    sys.stdout.write(json.dumps({"event": "streaming"}) + "\n")
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    report({"stalled": True})


def run_browser(url: str) -> None:
    from playwright.sync_api import sync_playwright

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS
        )
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.wait_for_selector("#connection.live")
        sys.stdout.write(json.dumps({"event": "streaming"}) + "\n")
        sys.stdout.flush()
        while not done.is_set():
            page.wait_for_timeout(200)
        held = page.evaluate("() => document.querySelector('#count').textContent")
        browser.close()
    report({"browser": True, "count": held, "console_errors": errors[:5]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the page, http://HOST:PORT/")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--browser", action="store_true", help="the page in headless Chromium")
    kind.add_argument("--stalled", action="store_true", help="ask for the stream, never read")
    args = parser.parse_args()
    os.nice(19)
    url = args.url if args.url.endswith("/") else args.url + "/"
    if args.browser:
        run_browser(url)
    elif args.stalled:
        run_stalled(url)
    else:
        asyncio.run(run_follower(url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
