"""The event stream's queues: a page that stops reading never holds the sender back; it is
told it lagged instead of being sent everything it missed; changes are gathered and sent as
one event."""

from __future__ import annotations

import asyncio
import json

from tap_emulator.web.events import LAGGED, Client, EventHub, encode
from tap_emulator.web.index import Change


def hub() -> EventHub:
    return EventHub(lambda: 7, lambda: {"mode": "test"}, max_clients=2, client_max_bytes=1000)


def events_in(data: bytes) -> list[tuple[str, str]]:
    found = []
    for block in data.decode().split("\n\n"):
        if block:
            event, payload = block.split("\n")
            found.append((event.removeprefix("event: "), payload.removeprefix("data: ")))
    return found


def test_a_page_that_stops_reading_is_told_it_lagged_and_holds_nothing_more() -> None:
    client = Client(max_bytes=1000)
    for n in range(100):  # nobody takes anything out
        client.offer(encode("rows", json.dumps({"n": n, "pad": "x" * 50})))

    assert client.queued_bytes <= 1000
    assert client.lagged >= 1
    waiting = asyncio.run(client.next())
    assert waiting is not None and LAGGED in waiting
    assert events_in(waiting)[0] == ("lagged", "{}")


def test_changes_are_gathered_into_one_rows_event_with_the_version() -> None:
    events = hub()
    client = events.subscribe()
    assert client is not None
    events.stage(Change(rows={1: '{"id":1}', 2: '{"id":2}'}))
    events.stage(Change(rows={1: '{"id":1,"final":true}'}, gone={2}))
    events.flush()

    sent = asyncio.run(client.next())
    assert sent is not None
    [(event, payload)] = events_in(sent)
    assert event == "rows"
    assert json.loads(payload) == {"version": 7, "rows": [{"id": 1, "final": True}], "gone": [2]}


def test_nothing_is_gathered_while_no_page_is_open() -> None:
    events = hub()
    events.stage(Change(rows={1: "{}"}))
    client = events.subscribe()
    assert client is not None
    events.flush()

    assert client.queued_bytes == 0


def test_pages_beyond_the_limit_are_refused_and_a_closed_one_frees_its_place() -> None:
    events = hub()
    first, second = events.subscribe(), events.subscribe()
    assert first is not None and second is not None
    assert events.subscribe() is None
    events.unsubscribe(first)
    assert events.subscribe() is not None
    assert asyncio.run(first.next()) is None  # a closed page's sender ends
