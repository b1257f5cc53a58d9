"""The page's event stream (server-sent events): changes to the index, gathered and sent at
most every 200 ms, and the status line once a second.

Each event is encoded once and put in every open page's own queue, bounded in bytes. Nothing
here ever waits for a page: a page that reads too slowly (or not at all) has its queue
emptied and gets a `lagged` event instead, telling it to fetch the table again; what it
missed is never held for it.

Events: `hello` (on connecting: the index's bound and version), `rows` (`{"version", "rows":
[...], "gone": [numbers]}`), `status` (health, rates, the index's state), `lagged`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from tap_emulator.web.index import Change

FLUSH_SECONDS = 0.2
STATUS_SECONDS = 1.0
DEFAULT_CLIENT_MAX_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_CLIENTS = 16


def encode(event: str, data: str) -> bytes:
    """One server-sent event; `data` is JSON (a single line)."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def encode_json(event: str, value: Any) -> bytes:
    return encode(event, json.dumps(value, ensure_ascii=False, separators=(",", ":")))


LAGGED = encode("lagged", "{}")


class Client:
    """One open page: what is waiting to be sent to it, at most `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.closed = False
        self.lagged = 0  # times its queue overflowed

    def offer(self, data: bytes) -> bool:
        """Queue `data`; False if the queue was full and emptied (the page lagged)."""
        if self.closed:
            return True
        kept = self._bytes + len(data) <= self.max_bytes
        if not kept:
            self._queue.clear()
            self._bytes = 0
            self.lagged += 1
            data = LAGGED
        self._queue.append(data)
        self._bytes += len(data)
        self._ready.set()
        return kept

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> bytes | None:
        """What to send next, all that waits in one piece; None once closed."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.closed:
            return None
        data = b"".join(self._queue)
        self._queue.clear()
        self._bytes = 0
        return data


class EventHub:
    """Gathers index changes and fans them out to the open pages."""

    def __init__(
        self,
        version: Callable[[], int],
        status: Callable[[], dict[str, Any]],
        max_clients: int = DEFAULT_MAX_CLIENTS,
        client_max_bytes: int = DEFAULT_CLIENT_MAX_BYTES,
        on_pages: Callable[[int], None] = lambda count: None,
    ) -> None:
        """`on_pages(count)`: told how many pages follow, whenever that changes."""
        self._version = version
        self._status = status
        self._on_pages = on_pages
        self.max_clients = max_clients
        self.client_max_bytes = client_max_bytes
        self.clients: set[Client] = set()
        self._staged = Change()
        self._staged_wake = asyncio.Event()
        self.sent_events = 0
        self.lagged = 0  # times a page's queue overflowed, all pages together

    # --- from the indexer ---------------------------------------------------------------

    def stage(self, change: Change) -> None:
        if not self.clients:
            return  # a page that connects later fetches the table first
        self._staged.merge(change)
        self._staged_wake.set()

    # --- pages --------------------------------------------------------------------------

    def subscribe(self) -> Client | None:
        """A new page's queue, or None when `max_clients` are open."""
        if len(self.clients) >= self.max_clients:
            return None
        client = Client(self.client_max_bytes)
        self.clients.add(client)
        self._on_pages(len(self.clients))
        return client

    def unsubscribe(self, client: Client) -> None:
        client.close()
        if client in self.clients:
            self.clients.discard(client)
            self._on_pages(len(self.clients))

    def close(self) -> None:
        for client in list(self.clients):
            self.unsubscribe(client)

    def state(self) -> dict[str, int]:
        return {"open": len(self.clients), "lagged": self.lagged}

    # --- the senders --------------------------------------------------------------------

    def _broadcast(self, data: bytes) -> None:
        self.sent_events += 1
        for client in self.clients:
            if not client.offer(data):
                self.lagged += 1

    def flush(self) -> None:
        staged, self._staged = self._staged, Change()
        if not staged or not self.clients:
            return
        rows = ",".join(staged.rows.values())
        gone = json.dumps(sorted(staged.gone))
        self._broadcast(
            encode("rows", f'{{"version":{self._version()},"rows":[{rows}],"gone":{gone}}}')
        )

    async def run_changes(self) -> None:
        while True:
            await self._staged_wake.wait()
            self._staged_wake.clear()
            self.flush()
            await asyncio.sleep(FLUSH_SECONDS)

    async def run_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            if self.clients:
                self._broadcast(encode_json("status", self._status()))
